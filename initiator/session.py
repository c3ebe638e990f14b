"""The full-feature phase of one iSCSI session, and its recovery, as QEMU + libiscsi do it.

One session = one connection at a time to one target. A reader task dispatches responses
to waiting commands by Initiator Task Tag; PDUs are serialized into one output buffer as
they are queued, which a command with no other in flight sends at once and a writer task
otherwise drains in one send per scheduling turn; a pinger sends NOP-Outs to notice a dead
target.

Recovery (error recovery level 0, like libiscsi's ``iscsi_reconnect``): when the connection
drops, a NOP goes unanswered, the target sends garbage, or the target asks for a logout
(AsyncEvent 1, after which we log out), every command that has no status yet is parked;
the session logs in again through the ORIGINAL portal (the redirector, which may send us
elsewhere), then each parked command is re-issued with a new ITT and CmdSN. Callers see
latency, not errors. Only when no login succeeds within ``replacement_timeout`` do
commands fail, with ``TargetUnreachable``; reconnect attempts go on in the background.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import trio

from iscsicore import fastpath
from iscsicore.framing import append_segments
from iscsicore.fullfeature.exchanges import (
    is_ping_answer,
    logout_request,
    nop_out_echo,
    nop_out_ping,
)
from iscsicore.fullfeature.numbering import InitiatorNumbering
from iscsicore.fullfeature.segments import segments
from iscsicore.fullfeature.sequence import DataSequence, SequenceFault
from iscsicore.keys import SessionParams
from iscsicore.pdu import (
    R2T,
    RESERVED_TAG,
    AsyncEvent,
    AsyncMessage,
    DataIn,
    DataOut,
    LogoutResponse,
    NopIn,
    Opcode,
    Pdu,
    Reject,
    ScsiResponse,
    ScsiResponseCode,
    TaskAttribute,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TmfFunction,
    TmfResponse,
    lun_from_number,
)
from iscsicore.portal import Portal
from iscsicore.scsi.opcodes import ScsiStatus
from iscsicore.scsi.sense import SenseKey, SenseParseError, parse_sense

from .completion import Completion
from .connection import Connection
from .errors import (
    CheckCondition,
    CommandRetriesExhausted,
    ConnectError,
    ConnectionLost,
    InitiatorError,
    LoginError,
    ScsiError,
    SessionClosed,
    TargetProtocolError,
    TargetUnreachable,
    TaskAborted,
    TaskManagementError,
)
from .login_flow import Established, LoginOptions, establish
from .stats import IoStats

log = logging.getLogger(__name__)

_ITT_LIMIT = 0xFFFFFFFF  # RESERVED_TAG itself is never used
_TRANSIENT_RETRIES = 8  # UNIT ATTENTION / BUSY / TASK SET FULL re-issues per command
# SCSI Command bytes 0 and 1, as plain ints for the hot path
_SCSI_COMMAND = int(Opcode.SCSI_COMMAND)
_FINAL, _READ, _WRITE = 0x80, 0x40, 0x20
_MAX_TASK_ATTRIBUTE = 7  # three bits of byte 1
_GOOD = int(ScsiStatus.GOOD)


@dataclass(slots=True)
class SessionConfig:
    """Tunables; the defaults follow QEMU/libiscsi and open-iscsi where they have one."""

    login: LoginOptions = field(default_factory=LoginOptions)
    nop_interval: float = 5.0  # send a NOP-Out ping this often (0 disables)
    nop_timeout: float = 5.0  # an unanswered ping means the connection is dead
    replacement_timeout: float = 120.0  # commands fail after the target is away this long
    max_command_retries: int = 16  # re-issues of one command after connection losses
    reconnect_backoff_first: float = 0.05
    reconnect_backoff_max: float = 1.0
    # A session lost sooner than this after its login counts as a quick loss: the next
    # reconnect waits, from reconnect_backoff_quick doubling to reconnect_backoff_max, so a
    # target that drops every session gets no reconnect storm (libiscsi #428).
    quick_loss: float = 2.0
    reconnect_backoff_quick: float = 0.25
    logout_timeout: float = 3.0


class _State(Enum):
    UP = "up"
    DRAINING = "draining"  # the target asked for a logout: no new commands on this connection
    DOWN = "down"
    CLOSED = "closed"


@dataclass(slots=True)
class CommandResult:
    status: int
    data: bytes | bytearray  # Data-In, trimmed to what the target sent
    sense: bytes = b""
    residual: int = 0
    underflow: bool = False
    overflow: bool = False


@dataclass(eq=False, slots=True)
class _Task:
    """One SCSI command for as long as the caller waits, across any number of attempts."""

    cdb: bytes
    lun_raw: int
    read_length: int
    write_data: memoryview | None
    attr: int
    # Data-In lands in ``buffer`` (allocated on first use), except the common case of one
    # Data-In carrying everything and the status: its bytes are kept as they are, no copy.
    buffer: bytearray | None = None
    whole: bytes | None = None
    itt: int = RESERVED_TAG
    cmd_sn: int = 0
    generation: int = -1
    done: Completion = field(default_factory=Completion)
    lost: bool = False  # the connection went away before status: re-issue
    error: InitiatorError | None = None
    response: ScsiResponse | DataIn | None = None
    received: int = 0  # Data-In bytes, for the transfer length when no residual is given
    data_in: DataSequence | None = None  # from the first Data-In on
    # `Session.submit`'s callback, called instead of waking a waiting caller
    on_done: Callable[[CommandResult | InitiatorError], None] | None = None

    def rearm(self) -> None:
        self.done.reset()
        self.lost = False
        self.error = None
        self.response = None
        self.received = 0
        self.data_in = None
        self.whole = None
        self.itt = RESERVED_TAG


@dataclass(eq=False, slots=True)
class _Exchange:
    """A non-SCSI request awaiting its answer (NOP ping, task management, logout)."""

    done: trio.Event = field(default_factory=trio.Event)
    answer: Pdu | None = None
    lost: bool = False


class Session:
    """A logged-in session to one target; use ``Session.connect`` as a context manager."""

    def __init__(
        self, portal: Portal, target: str, config: SessionConfig, established: Established
    ) -> None:
        self.original_portal = portal  # where every reconnect starts (the redirector)
        self.target = target
        self.config = config
        self.stats = IoStats()
        self._state = _State.DOWN
        self._failure: InitiatorError | None = None
        self._tasks: dict[int, _Task] = {}
        self._exchanges: dict[int, _Exchange] = {}
        self._next_itt = 1
        self._generation = 0
        self._changed = trio.Event()  # set and replaced whenever a waiter may proceed
        self._changed_waiters = 0
        self._conn: Connection | None = None
        # Serialized PDUs not sent yet; swapped out whole on each write.
        self._out = bytearray()
        self._out_ready = trio.Event()
        self._writer_busy = False  # the writer holds bytes not fully sent: it sends next
        self._conn_scope: trio.CancelScope | None = None
        self._conn_nursery: trio.Nursery | None = None
        self._nursery: trio.Nursery | None = None  # the session's: outlives connections
        self._dispatching = False  # the reader is handling a receive: it sends at the end
        self._woke_callers = False  # that receive completed commands someone awaits
        self._reconnect_delay = 0.0
        self._lost_at: float | None = None
        self._installed_at = 0.0
        self._quick_backoff = 0.0  # the wait before the next reconnect after a quick loss
        self._last_loss: InitiatorError | None = None
        self.params: SessionParams = established.params
        self._install(established)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, portal: Portal, target: str, config: SessionConfig | None = None
    ) -> AsyncIterator[Session]:
        """Log in (following redirects), run the session, log out on exit."""
        config = config or SessionConfig()
        established = await establish(portal, target, config.login)
        session = cls(portal, target, config, established)
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            session._nursery = nursery
            nursery.start_soon(session._supervise)
            try:
                yield session
            except Exception as error:
                # Re-raised below, outside the nursery, so that callers catch the error
                # itself rather than an ExceptionGroup around it.
                failure = error
            finally:
                await session._shutdown()
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    @property
    def portal(self) -> Portal | None:
        """The portal serving the session now (None while reconnecting)."""
        return self._conn.portal if self._conn is not None and self._state is _State.UP else None

    @property
    def connected(self) -> bool:
        return self._state is _State.UP

    @property
    def outstanding(self) -> int:
        return len(self._tasks)

    def outstanding_tags(self) -> list[int]:
        return list(self._tasks)

    def _install(self, established: Established) -> None:
        self._conn = established.connection
        self.params = established.params
        self._generation += 1
        self._sn = InitiatorNumbering(
            established.exp_cmd_sn, established.max_cmd_sn, established.stat_sn
        )
        self._out = bytearray()  # whatever was queued for the previous connection is moot
        self._out_ready = trio.Event()
        self._writer_busy = False
        self._dispatching = False
        self._state = _State.UP
        self._failure = None
        self._lost_at = None
        self._installed_at = trio.current_time()
        self.stats.portal = str(established.connection.portal)
        self._wake()

    def _wake(self) -> None:
        if self._changed_waiters:  # most window updates have nobody waiting: skip the Event
            self._changed.set()
            self._changed = trio.Event()

    async def _supervise(self) -> None:
        """Run the connection's tasks; when it is lost, reconnect; until closed."""
        while self._state is not _State.CLOSED:
            conn = self._conn
            assert conn is not None
            async with trio.open_nursery() as nursery:
                self._conn_scope = nursery.cancel_scope
                self._conn_nursery = nursery
                nursery.start_soon(self._guard, self._reader, conn)
                nursery.start_soon(self._guard, self._writer, conn)
                if self.config.nop_interval > 0:
                    nursery.start_soon(self._guard, self._pinger, conn)
            await conn.aclose()
            if self._state is _State.CLOSED:
                return
            self._connection_lost(ConnectionLost("connection closed"))
            await self._reconnect()

    async def _guard(self, body: Any, *args: Any) -> None:
        """Run one connection task; any failure of it is a loss of the connection."""
        try:
            await body(*args)
        except (ConnectionLost, TargetProtocolError) as error:
            self._connection_lost(error)

    def _connection_lost(self, reason: InitiatorError) -> None:
        """Synchronous: park every command of the lost connection for re-issue."""
        if self._state is _State.CLOSED or self._state is _State.DOWN:
            return
        log.info("session to %s: connection lost: %s", self.target, reason)
        self._last_loss = reason
        self._state = _State.DOWN
        self._lost_at = trio.current_time()
        self.stats.portal = ""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.lost = True
            self._finish(task)
        for exchange in self._exchanges.values():
            exchange.lost = True
            exchange.done.set()
        self._exchanges.clear()
        if self._conn_scope is not None:
            self._conn_scope.cancel()
        self._wake()

    async def _reconnect(self) -> None:
        """Log in again through the original portal until it works; fail commands after the
        replacement timeout, but keep trying (as open-iscsi does)."""
        config = self.config
        lost_at = self._lost_at if self._lost_at is not None else trio.current_time()
        deadline = lost_at + config.replacement_timeout
        if lost_at - self._installed_at < config.quick_loss:
            self._quick_backoff = min(
                max(self._quick_backoff * 2, config.reconnect_backoff_quick),
                config.reconnect_backoff_max,
            )
        else:
            self._quick_backoff = 0.0
        delay = max(self._reconnect_delay, self._quick_backoff)
        self._reconnect_delay = 0.0
        backoff = config.reconnect_backoff_first
        last_error: Exception | None = None
        while self._state is _State.DOWN:
            if self._failure is None and trio.current_time() >= deadline:
                self._failure = TargetUnreachable(
                    f"{self.target} unreachable through {self.original_portal} for "
                    f"{config.replacement_timeout:g} s: "
                    f"{last_error or self._last_loss or 'no login answered'}"
                )
                log.warning("%s", self._failure)
                self._wake()
            # Until the replacement timeout fires, no sleep or login attempt may outlast it.
            limit = deadline if self._failure is None else math.inf
            with trio.move_on_at(limit):
                await trio.sleep(delay)
                delay, backoff = backoff, min(backoff * 2, config.reconnect_backoff_max)
                try:
                    established = await establish(self.original_portal, self.target, config.login)
                except (ConnectError, LoginError, ConnectionLost, TargetProtocolError) as error:
                    last_error = error
                    log.info("reconnect to %s failed: %s", self.target, error)
                    continue
                if self._state is not _State.DOWN:  # closed while we logged in
                    await established.connection.aclose()
                    return
                self.stats.reconnects += 1
                self._install(established)
                log.info(
                    "session to %s: reconnected via %s", self.target, established.connection.portal
                )

    async def _shutdown(self) -> None:
        with trio.CancelScope(shield=True):
            was_up = self._state is _State.UP
            # CLOSED first: the target closing the connection after our logout is no loss.
            self._state = _State.CLOSED
            if was_up and self._conn is not None:
                with trio.move_on_after(self.config.logout_timeout):
                    await self._logout()
            self._failure = SessionClosed("session closed")
            tasks = list(self._tasks.values())
            self._tasks.clear()
            for task in tasks:
                task.error = self._failure
                self._finish(task)
            if self._conn is not None:
                await self._conn.aclose()
            if self._conn_scope is not None:
                self._conn_scope.cancel()
            self._wake()

    async def _logout(self) -> LogoutResponse | None:
        exchange, itt = self._open_exchange()
        sn = self._sn
        self._enqueue([logout_request(itt, cmd_sn=sn.cmd_sn, exp_stat_sn=sn.exp_stat_sn)])
        await exchange.done.wait()
        return exchange.answer if isinstance(exchange.answer, LogoutResponse) else None

    # ------------------------------------------------------------------ commands

    async def execute(
        self,
        cdb: bytes,
        *,
        lun: int = 0,
        read_length: int = 0,
        write_data: bytes | bytearray | memoryview | None = None,
        attr: int = TaskAttribute.SIMPLE,
        check: bool = True,
    ) -> CommandResult:
        """Run one SCSI command; re-issued transparently across reconnects.

        With ``check`` a status other than GOOD raises (``CheckCondition`` with decoded
        sense, else ``ScsiError``).
        """
        return await self._run(self._new_task(cdb, lun, read_length, write_data, attr), check)

    def submit(
        self,
        cdb: bytes,
        on_done: Callable[[CommandResult | InitiatorError], None],
        *,
        lun: int = 0,
        read_length: int = 0,
        write_data: bytes | bytearray | memoryview | None = None,
        attr: int = TaskAttribute.SIMPLE,
    ) -> None:
        """Start one SCSI command without waiting for it (as fio's libiscsi engine does):
        ``on_done`` gets the result, or the error `execute` would raise (with ``check``).

        A command that succeeds costs no task and no task switch: the reader calls
        ``on_done`` as the status arrives, and a command ``on_done`` submits goes out in
        the reader's send at the end of that receive. Re-issues, retries and waits for the
        command window run in a task of their own, exactly as in `execute`.
        """
        task = self._new_task(cdb, lun, read_length, write_data, attr)
        task.on_done = on_done
        if self._state is _State.UP and self._failure is None and self._sn.can_send():
            self._issue(task)
        else:
            assert self._nursery is not None, "submit needs a session from Session.connect"
            self._nursery.start_soon(self._finish_submitted, task, on_done, False)

    async def _finish_submitted(
        self,
        task: _Task,
        on_done: Callable[[CommandResult | InitiatorError], None],
        issued: bool,
    ) -> None:
        task.on_done = None  # from here on a waiter: `_run` does the rest
        try:
            result = await self._run(task, check=True, issued=issued)
        except InitiatorError as error:
            on_done(error)
        else:
            on_done(result)

    def _new_task(
        self,
        cdb: bytes,
        lun: int,
        read_length: int,
        write_data: bytes | bytearray | memoryview | None,
        attr: int,
    ) -> _Task:
        if len(cdb) > 16:
            raise ValueError("CDBs longer than 16 bytes (extended CDB AHS) are not supported")
        if not 0 <= attr <= _MAX_TASK_ATTRIBUTE:
            raise ValueError(f"task attribute {attr} is not one of 0..{_MAX_TASK_ATTRIBUTE}")
        return _Task(
            cdb=bytes(cdb).ljust(16, b"\x00"),
            lun_raw=lun_from_number(lun),
            read_length=read_length,
            write_data=memoryview(write_data).cast("B") if write_data is not None else None,
            attr=attr,
        )

    async def _run(self, task: _Task, check: bool, *, issued: bool = False) -> CommandResult:
        """Issue ``task`` (unless ``issued``: it has its outcome) until it has a final one."""
        reissues = transient_retries = 0
        while True:
            if not issued:
                if not (self._state is _State.UP and self._failure is None and self._sn.can_send()):
                    await self._wait_for_slot()  # the common case above skips a coroutine
                self._issue(task)
            issued = False
            try:
                await task.done.wait()
            except BaseException:
                # Cancelled by the caller: forget the tag and, as QEMU does, ask the target
                # to abort the task so that it does not wait for Data-Out nobody will send.
                if self._tasks.pop(task.itt, None) is not None and self._state is _State.UP:
                    self._send_abort(task)
                raise
            if task.lost:
                reissues += 1
                if reissues > self.config.max_command_retries:
                    raise CommandRetriesExhausted(
                        f"command {task.cdb[0]:#04x} lost its connection {reissues} times; "
                        f"last loss: {self._last_loss}"
                    )
            else:
                if task.error is not None:
                    raise task.error
                assert task.response is not None
                if task.response.status == _GOOD:
                    return self._result(task, check)
                retry_after = self._transient_status(task)
                if retry_after is None or transient_retries >= _TRANSIENT_RETRIES:
                    return self._result(task, check)
                transient_retries += 1
                await trio.sleep(retry_after * transient_retries)
            self.stats.retried_commands += 1
            task.rearm()

    def _transient_status(self, task: _Task) -> float | None:
        """Seconds to wait before re-issuing, for statuses QEMU retries: a UNIT ATTENTION
        (a target that restarted reports power-on/reset once per I_T nexus), BUSY and
        TASK SET FULL; None when the status is final."""
        response = task.response
        assert response is not None
        status = response.status
        if status in (ScsiStatus.BUSY, ScsiStatus.TASK_SET_FULL):
            return 0.05  # times the attempt number: 1.8 s in all
        if status == ScsiStatus.CHECK_CONDITION and isinstance(response, ScsiResponse):
            data = response.data
            if len(data) >= 5:
                response_code = data[2] & 0x7F
                key = data[4] & 0x0F if response_code in (0x70, 0x71) else data[3] & 0x0F
                if key == SenseKey.UNIT_ATTENTION:
                    self.stats.unit_attentions += 1
                    return 0.0
        return None

    def _result(self, task: _Task, check: bool) -> CommandResult:
        response = task.response
        assert response is not None
        sense = b""
        if isinstance(response, ScsiResponse) and len(response.data) >= 2:
            (sense_length,) = struct.unpack_from(">H", response.data)
            sense = bytes(response.data[2 : 2 + sense_length])
        residual = response.residual_count if (response.underflow or response.overflow) else 0
        transferred = task.received
        if response.underflow:
            transferred = min(transferred, max(0, task.read_length - residual))
        data: bytes | bytearray
        if task.whole is not None:
            data = task.whole if transferred >= len(task.whole) else task.whole[:transferred]
        elif task.buffer is not None:
            data = task.buffer
            if transferred < len(data):
                del data[transferred:]
        else:
            data = b""
        result = CommandResult(
            response.status, data, sense, residual, response.underflow, response.overflow
        )
        if check and result.status != _GOOD:
            raise _status_error(result)
        return result

    async def _wait_for_slot(self, *, immediate: bool = False) -> None:
        """Wait until the session is up and, unless for an immediate PDU (which does not
        consume a CmdSN), CmdSN is inside the target's command window."""
        while True:
            if self._failure is not None:
                raise self._failure
            if self._state is _State.UP and (immediate or self._sn.can_send()):
                return
            self._changed_waiters += 1
            try:
                await self._changed.wait()
            finally:
                self._changed_waiters -= 1

    def _allocate_itt(self) -> int:
        while True:
            itt = self._next_itt
            self._next_itt = itt + 1 if itt + 1 < _ITT_LIMIT else 1
            if itt not in self._tasks and itt not in self._exchanges:
                return itt

    def _enqueue(self, pdus: list[Pdu]) -> None:
        """Queue PDUs for the writer; after a connection loss they are dropped with the
        connection (recovery re-issues what matters)."""
        conn = self._conn
        assert conn is not None
        for pdu in pdus:
            conn.append(self._out, pdu)
        if not self._dispatching:  # else the reader sends when its receive is handled
            self._out_ready.set()

    def _send_now_or_queue(self) -> None:
        """Send the output buffer at once (nothing else is queued or being sent, so order
        holds); what the socket does not take, and any error, is left to the writer."""
        conn = self._conn
        assert conn is not None
        out = self._out
        try:
            sent = conn.send_now(out)
        except ConnectionLost:
            sent = 0  # the writer meets the same error and handles the loss
        if sent < len(out):
            del out[:sent]
            self._out_ready.set()
        else:
            out.clear()

    def _issue(self, task: _Task) -> None:
        """Synchronous, so CmdSN order is queue order: assign tags, queue the PDUs.

        The SCSI Command is packed straight into the output buffer (no PDU object). With
        no other command in flight nobody else will send soon: it goes out at once, without
        a turn of the writer task (the queue depth 1 case).
        """
        itt = self._allocate_itt()
        task.itt = itt
        task.cmd_sn = cmd_sn = self._sn.take_cmd_sn()
        task.generation = self._generation
        alone = not self._tasks and not self._out and not self._writer_busy
        self._tasks[itt] = task
        conn = self._conn
        assert conn is not None
        data = task.write_data
        immediate: memoryview | bytes = b""
        unsolicited = 0  # bytes to send in Data-Out PDUs after the command
        flags = _FINAL | task.attr
        if data is not None and len(data):
            flags |= _WRITE
            transfer_length = len(data)
            params = self.params
            unsolicited_limit = min(transfer_length, params.first_burst_length)
            if params.immediate_data:
                immediate = data[
                    : min(unsolicited_limit, params.target_max_recv_data_segment_length)
                ]
            if not params.initial_r2t and len(immediate) < unsolicited_limit:
                flags &= ~_FINAL
                unsolicited = unsolicited_limit - len(immediate)
        else:
            transfer_length = task.read_length
            if transfer_length > 0:
                flags |= _READ
        bhs = fastpath.scsi_command_bhs(
            _SCSI_COMMAND,
            flags,
            len(immediate),
            task.lun_raw,
            itt,
            transfer_length,
            cmd_sn,
            self._sn.exp_stat_sn,
            task.cdb,
        )
        append_segments(self._out, bhs, b"", immediate, conn.header_digest, conn.data_digest)
        if unsolicited:
            self._enqueue(self._data_out(task, RESERVED_TAG, len(immediate), unsolicited))
        if alone:
            self._send_now_or_queue()
        elif not self._dispatching:  # else the reader sends when its receive is handled
            self._out_ready.set()

    def _data_out(self, task: _Task, ttt: int, offset: int, length: int) -> list[Pdu]:
        """The Data-Out sequence for ``length`` bytes at ``offset`` (one burst: the
        unsolicited data or one R2T's), each PDU within the target's
        MaxRecvDataSegmentLength."""
        data = task.write_data
        assert data is not None
        exp_stat_sn = self._sn.exp_stat_sn
        return [
            DataOut(
                final=final,
                lun=task.lun_raw,
                itt=task.itt,
                ttt=ttt,
                exp_stat_sn=exp_stat_sn,
                data_sn=data_sn,
                buffer_offset=start,
                data=data[start : start + size],
            )
            for data_sn, start, size, final in segments(
                offset, offset + length, self.params.target_max_recv_data_segment_length, length
            )
        ]

    # ------------------------------------------------------------------ task management

    def _open_exchange(self) -> tuple[_Exchange, int]:
        itt = self._allocate_itt()
        exchange = _Exchange()
        self._exchanges[itt] = exchange
        return exchange, itt

    async def _task_management(
        self, function: TmfFunction, *, lun: int = 0, referenced_task_tag: int = RESERVED_TAG
    ) -> TmfResponse | int:
        while True:
            await self._wait_for_slot(immediate=True)
            exchange, itt = self._open_exchange()
            referenced = self._tasks.get(referenced_task_tag)
            self._enqueue(
                [
                    TaskMgmtRequest(
                        immediate=True,
                        function=function,
                        lun=lun_from_number(lun),
                        itt=itt,
                        referenced_task_tag=referenced_task_tag,
                        cmd_sn=self._sn.cmd_sn,
                        exp_stat_sn=self._sn.exp_stat_sn,
                        ref_cmd_sn=referenced.cmd_sn if referenced else self._sn.cmd_sn,
                    )
                ]
            )
            try:
                await exchange.done.wait()
            finally:
                self._exchanges.pop(itt, None)
            if exchange.lost:
                # Connection recovery already dropped every task of the old connection.
                return TmfResponse.TASK_DOES_NOT_EXIST
            answer = exchange.answer
            assert isinstance(answer, TaskMgmtResponse)
            try:
                return TmfResponse(answer.response)
            except ValueError:
                return answer.response

    def _send_abort(self, task: _Task) -> None:
        """ABORT TASK without waiting for the answer (the exchange is dropped with it)."""
        _exchange, itt = self._open_exchange()
        self._enqueue(
            [
                TaskMgmtRequest(
                    immediate=True,
                    function=TmfFunction.ABORT_TASK,
                    lun=task.lun_raw,
                    itt=itt,
                    referenced_task_tag=task.itt,
                    cmd_sn=self._sn.cmd_sn,
                    exp_stat_sn=self._sn.exp_stat_sn,
                    ref_cmd_sn=task.cmd_sn,
                )
            ]
        )

    async def abort_task(self, itt: int, *, lun: int = 0) -> TmfResponse | int:
        """ABORT TASK for the command with tag ``itt``; that command then raises
        ``TaskAborted``. Returns the TMF response (COMPLETE, TASK_DOES_NOT_EXIST, ...)."""
        response = await self._task_management(
            TmfFunction.ABORT_TASK, lun=lun, referenced_task_tag=itt
        )
        if response in (TmfResponse.COMPLETE, TmfResponse.TASK_DOES_NOT_EXIST):
            self._fail_task(itt, TaskAborted(f"task {itt:#x} aborted"))
        return response

    async def lun_reset(self, *, lun: int = 0) -> None:
        response = await self._task_management(TmfFunction.LOGICAL_UNIT_RESET, lun=lun)
        if response != TmfResponse.COMPLETE:
            raise TaskManagementError(f"LUN reset answered {response!r}", int(response))
        raw = lun_from_number(lun)
        for itt in [itt for itt, task in self._tasks.items() if task.lun_raw == raw]:
            self._fail_task(itt, TaskAborted(f"task {itt:#x} aborted by LUN reset"))

    def _fail_task(self, itt: int, error: InitiatorError) -> None:
        task = self._tasks.pop(itt, None)
        if task is not None:
            task.error = error
            self._finish(task)

    async def ping(self) -> float:
        """One NOP-Out/NOP-In round trip, in seconds."""
        await self._wait_for_slot(immediate=True)
        started = trio.current_time()
        exchange = self._send_ping()
        await exchange.done.wait()
        if exchange.lost:
            raise ConnectionLost("connection lost during ping")
        return trio.current_time() - started

    def _send_ping(self) -> _Exchange:
        exchange, itt = self._open_exchange()
        sn = self._sn
        self._enqueue([nop_out_ping(itt, cmd_sn=sn.cmd_sn, exp_stat_sn=sn.exp_stat_sn)])
        return exchange

    # ------------------------------------------------------------------ connection tasks

    async def _writer(self, conn: Connection) -> None:
        """Send the output buffer, everything queued so far in one write."""
        while True:
            await self._out_ready.wait()
            self._out_ready = trio.Event()
            self._writer_busy = True
            try:
                while self._out:
                    out, self._out = self._out, bytearray()
                    await conn.send_bytes(out)
            finally:
                self._writer_busy = False

    async def _pinger(self, conn: Connection) -> None:
        while True:
            await trio.sleep(self.config.nop_interval)
            if self._state is not _State.UP:
                continue
            exchange = self._send_ping()
            with trio.move_on_after(self.config.nop_timeout):
                await exchange.done.wait()
            if not exchange.done.is_set():
                raise ConnectionLost(
                    f"NOP-Out ping unanswered for {self.config.nop_timeout:g} s: target dead?"
                )

    async def _reader(self, conn: Connection) -> None:
        """Dispatch every PDU of each receive, then wait for more."""
        handlers: dict[type[Pdu], Any] = {
            DataIn: self._on_data_in,
            ScsiResponse: self._on_response,
            R2T: self._on_r2t,
            NopIn: self._on_nop_in,
            AsyncMessage: lambda pdu: self._on_async(pdu, conn),
            TaskMgmtResponse: self._on_exchange_answer,
            LogoutResponse: self._on_exchange_answer,
            Reject: self._on_reject,
        }
        try:
            while True:
                pdu = conn.next_buffered()
                if pdu is None:
                    # Everything this receive brought is handled: what it made the session
                    # queue (commands submitted from completions, Data-Out) goes in one send.
                    self._dispatching = False
                    if self._out and not self._writer_busy:
                        self._send_now_or_queue()
                    if self._woke_callers:
                        # Let them issue their next commands before the next receive, as a
                        # pipeline of `execute` callers needs (submitted ones have already).
                        self._woke_callers = False
                        await trio.lowlevel.checkpoint()
                    await conn.receive_more()
                    self._dispatching = True
                    continue
                handler = handlers.get(type(pdu))
                if handler is None:
                    raise TargetProtocolError(f"unexpected {pdu.opcode.name} in full-feature phase")
                handler(pdu)
        finally:
            self._dispatching = False

    def _on_data_in(self, pdu: DataIn) -> None:
        if self._sn.update_window(pdu.exp_cmd_sn, pdu.max_cmd_sn):
            self._wake()
        if pdu.status_present:
            self._sn.status_seen(pdu.stat_sn)
        task = self._tasks.get(pdu.itt)
        if task is None:
            return  # a task we gave up on (cancelled or aborted)
        data = pdu.data
        if (
            pdu.status_present
            and task.data_in is None
            and not pdu.data_sn
            and not pdu.buffer_offset
            and len(data) <= task.read_length
        ):
            # The common case: one Data-In with all the data and the status. In sequence
            # by itself; its bytes are a private copy from the framer: kept, no copy.
            if data:
                task.whole = bytes(data)
                task.received = len(data)
            task.response = pdu
            self._complete(task)
            return
        sequence = task.data_in
        if sequence is None:
            sequence = task.data_in = DataSequence(
                RESERVED_TAG, 0, task.read_length, final_at_end=False
            )
        fault = sequence.accept(pdu.data_sn, pdu.buffer_offset, len(data), pdu.final)
        end = pdu.buffer_offset + len(data)
        if fault is not None:
            reason = (
                f"Data-In beyond the expected length: {end} > {task.read_length}"
                if fault is SequenceFault.OVERRUN
                else f"Data-In out of sequence ({fault.value}): DataSN {pdu.data_sn}, "
                f"offset {pdu.buffer_offset}"
            )
            self._fail_task(pdu.itt, TargetProtocolError(reason))
            return
        if data:
            if task.buffer is None and pdu.buffer_offset == 0 and pdu.status_present:
                task.whole = bytes(data)  # already a private copy from the framer: free
            else:
                if task.buffer is None:
                    task.buffer = bytearray(task.read_length)
                task.buffer[pdu.buffer_offset : end] = data
            task.received = end  # in order: the sequence checked it
        if pdu.status_present:
            task.response = pdu
            self._complete(task)

    def _on_response(self, pdu: ScsiResponse) -> None:
        if self._sn.update_window(pdu.exp_cmd_sn, pdu.max_cmd_sn):
            self._wake()
        self._sn.status_seen(pdu.stat_sn)
        task = self._tasks.get(pdu.itt)
        if task is None:
            return
        if pdu.response != ScsiResponseCode.COMPLETED:
            self._fail_task(
                pdu.itt, ScsiError(f"target failure (iSCSI response {pdu.response:#x})", -1)
            )
            return
        task.response = pdu
        self._complete(task)

    def _complete(self, task: _Task) -> None:
        del self._tasks[task.itt]
        self._finish(task)

    def _finish(self, task: _Task) -> None:
        """The attempt has an outcome: wake the caller waiting in `execute`, or for a
        submitted command call its callback at once when it succeeded; anything else
        (status other than GOOD, error, lost connection) goes through `execute`'s retry
        logic in a task of its own."""
        task.done.set()
        on_done = task.on_done
        if on_done is None:
            self._woke_callers = True
            return
        response = task.response
        if (
            response is not None
            and response.status == _GOOD
            and not task.lost
            and task.error is None
        ):
            on_done(self._result(task, check=False))
        else:
            assert self._nursery is not None
            self._nursery.start_soon(self._finish_submitted, task, on_done, True)

    def _on_r2t(self, pdu: R2T) -> None:
        if self._sn.update_window(pdu.exp_cmd_sn, pdu.max_cmd_sn):
            self._wake()
        task = self._tasks.get(pdu.itt)
        if task is None:
            return
        total = len(task.write_data) if task.write_data is not None else 0
        end = pdu.buffer_offset + pdu.desired_data_transfer_length
        if pdu.desired_data_transfer_length == 0 or end > total:
            self._fail_task(
                pdu.itt,
                TargetProtocolError(
                    f"R2T for bytes {pdu.buffer_offset}..{end} of a {total}-byte write"
                ),
            )
            return
        self._enqueue(
            self._data_out(task, pdu.ttt, pdu.buffer_offset, pdu.desired_data_transfer_length)
        )

    def _on_nop_in(self, pdu: NopIn) -> None:
        sn = self._sn
        if sn.update_window(pdu.exp_cmd_sn, pdu.max_cmd_sn):
            self._wake()
        if is_ping_answer(pdu):
            sn.status_seen(pdu.stat_sn)
            exchange = self._exchanges.pop(pdu.itt, None)
            if exchange is not None:
                exchange.answer = pdu
                exchange.done.set()
        echo = nop_out_echo(pdu, cmd_sn=sn.cmd_sn, exp_stat_sn=sn.exp_stat_sn)
        if echo is not None:  # the target pings us
            self._enqueue([echo])

    def _on_exchange_answer(self, pdu: TaskMgmtResponse | LogoutResponse) -> None:
        if self._sn.update_window(pdu.exp_cmd_sn, pdu.max_cmd_sn):
            self._wake()
        self._sn.status_seen(pdu.stat_sn)
        exchange = self._exchanges.pop(pdu.itt, None)
        if exchange is not None:
            exchange.answer = pdu
            exchange.done.set()

    def _on_reject(self, pdu: Reject) -> None:
        if self._sn.update_window(pdu.exp_cmd_sn, pdu.max_cmd_sn):
            self._wake()
        self._sn.status_seen(pdu.stat_sn)
        header = bytes(pdu.data)
        if len(header) < 20:
            raise TargetProtocolError(f"Reject (reason {pdu.reason:#x}) without the header")
        (itt,) = struct.unpack_from(">I", header, 16)
        error = TargetProtocolError(f"target rejected a PDU: reason {pdu.reason:#x}")
        if itt in self._tasks:
            self._fail_task(itt, error)
        elif (exchange := self._exchanges.pop(itt, None)) is not None:
            exchange.done.set()

    def _on_async(self, pdu: AsyncMessage, conn: Connection) -> None:
        if self._sn.update_window(pdu.exp_cmd_sn, pdu.max_cmd_sn):
            self._wake()
        self._sn.status_seen(pdu.stat_sn)
        event = pdu.async_event
        if event == AsyncEvent.LOGOUT_REQUEST or event == AsyncEvent.NEGOTIATION_REQUEST:
            if self._state is _State.UP:
                self._state = _State.DRAINING
                log.info("%s asks for a logout within %d s", conn.portal, pdu.parameter3)
                assert self._conn_nursery is not None
                self._conn_nursery.start_soon(self._requested_logout, conn, pdu.parameter3)
        elif event in (AsyncEvent.DROP_CONNECTION, AsyncEvent.DROP_ALL_CONNECTIONS):
            # The target drops us; come back after Time2Wait (Parameter2).
            self._reconnect_delay = float(pdu.parameter2)
            raise ConnectionLost(f"target will drop the connection (AsyncEvent {event})")

    async def _requested_logout(self, conn: Connection, within: int) -> None:
        """Let commands in flight finish, log out, then reconnect (failback path)."""
        # Half the time given: the logout must still arrive in time on a loaded machine.
        deadline = trio.current_time() + max(0.5, min(float(within or 2), 10.0) / 2)
        while self._tasks and trio.current_time() < deadline and self._conn is conn:
            await trio.sleep(0.005)
        if self._conn is not conn or self._state is not _State.DRAINING:
            return
        answer: LogoutResponse | None = None
        with trio.move_on_after(self.config.logout_timeout):
            answer = await self._logout()
        if answer is not None:
            self._reconnect_delay = min(float(answer.time2wait), 2.0)
        self._state = _State.UP  # so that the loss below is processed like any other
        self._connection_lost(ConnectionLost("logged out at the target's request"))


def _status_error(result: CommandResult) -> InitiatorError:
    if result.status == ScsiStatus.CHECK_CONDITION and result.sense:
        try:
            return CheckCondition(parse_sense(result.sense), result.sense)
        except SenseParseError:
            return CheckCondition(None, result.sense)
    if result.status == ScsiStatus.TASK_ABORTED:
        return TaskAborted("task aborted by the target")
    try:
        name = ScsiStatus(result.status).name
    except ValueError:
        name = f"{result.status:#04x}"
    return ScsiError(f"SCSI status {name}", result.status)
