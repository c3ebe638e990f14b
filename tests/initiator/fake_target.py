"""A small scripted iSCSI target and redirector for behaviours tgtd cannot produce:
AsyncEvent logout requests (failback), target NOP-In pings, malformed PDUs, a redirector
that moves a vDisk between targets. Logins go through the shared ``TargetLogin``; the
full-feature phase knows READ/WRITE(16), READ CAPACITY(16), TEST UNIT READY and logout.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypedDict

import trio

from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.keys import SessionParams, SessionType
from iscsicore.login import Accept, Redirect, Refuse, SessionRequest, TargetLogin, TargetLoginConfig
from iscsicore.pdu import (
    R2T,
    RESERVED_TAG,
    AsyncEvent,
    AsyncMessage,
    DataIn,
    DataOut,
    LoginRequest,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Pdu,
    ScsiCommand,
    ScsiResponse,
)
from iscsicore.portal import Portal
from iscsicore.seqnum import sn_gt

BLOCK = 512
IQN = "iqn.2026-11.test.fake:disk"


class StatusFields(TypedDict):
    stat_sn: int
    exp_cmd_sn: int
    max_cmd_sn: int


@dataclass
class FakeTarget:
    """One target portal serving one LUN (LUN 0) from a shared bytearray."""

    disk: bytearray
    host: str = "127.0.0.1"
    port: int = 0
    commands: int = 0
    logins: int = 0
    nop_replies: list[int] = field(default_factory=list)
    logouts: int = 0
    # Hooks: called with (session, command count) after each command; may send PDUs.
    after_command: Callable[[FakeSession, int], Awaitable[None]] | None = None
    garbage_after_login: bytes | None = None
    # Hook: may answer a command itself (returns True) instead of the normal emulation.
    respond: Callable[[FakeSession, ScsiCommand], Awaitable[bool]] | None = None
    sessions: list[FakeSession] = field(default_factory=list)
    # Login limits, to drive the initiator's immediate / unsolicited / R2T paths.
    max_recv_data_segment_length: int = 65536
    first_burst_length: int = 65536
    max_burst_length: int = 262144
    initial_r2t: bool = False
    immediate_data: bool = True
    data_outs: list[tuple[int, int, int]] = field(default_factory=list)  # (ttt, offset, len)
    window: int = 32  # MaxCmdSN - ExpCmdSN + 1 granted
    window_violations: list[int] = field(default_factory=list)  # CmdSNs beyond MaxCmdSN

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        session = FakeSession(self, stream)
        self.sessions.append(session)
        try:
            await session.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
            pass
        finally:
            await stream.aclose()


def login_config(
    resolve: Callable[[str, str | None, SessionType], object], target: FakeTarget | None = None
) -> TargetLoginConfig:
    limits = target or FakeTarget(bytearray())
    return TargetLoginConfig(
        portal_group_tag=1,
        resolve=resolve,  # type: ignore[arg-type]
        allocate_tsih=lambda request: 1,
        max_recv_data_segment_length=limits.max_recv_data_segment_length,
        first_burst_length=limits.first_burst_length,
        max_burst_length=limits.max_burst_length,
        initial_r2t=limits.initial_r2t,
        immediate_data=limits.immediate_data,
        cmd_window=limits.window,
    )


@dataclass
class _Write:
    command: ScsiCommand
    buffer: bytearray
    offset: int
    received: int = 0  # bytes received contiguously from the start

    def take(self, at: int, data: bytes | bytearray | memoryview) -> None:
        if at != self.received:
            raise AssertionError(f"data at {at}, expected {self.received} (in order)")
        if at + len(data) > len(self.buffer):
            raise AssertionError("more data than the command's transfer length")
        self.buffer[at : at + len(data)] = data
        self.received += len(data)


class FakeSession:
    def __init__(self, target: FakeTarget, stream: trio.SocketStream) -> None:
        self.target = target
        self.stream = stream
        self.framer = PduFramer(receiving_from="initiator")
        self.stat_sn = 0
        self.exp_cmd_sn = 0
        self.send_lock = trio.Lock()
        self.pending_writes: dict[int, _Write] = {}
        self.params = SessionParams()
        self.advertised_max = 0
        self.in_flight = 0

    async def receive(self) -> Pdu:
        while (pdu := self.framer.next_pdu()) is None:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.framer.feed(data)
        return pdu

    async def send(self, *pdus: Pdu) -> None:
        async with self.send_lock:
            await self.stream.send_all(b"".join(encode_pdu(p) for p in pdus))

    def max_cmd_sn(self) -> int:
        """ExpCmdSN + free slots - 1: commands in flight use up the window."""
        free = self.target.window - self.in_flight
        self.advertised_max = (self.exp_cmd_sn + free - 1) & 0xFFFFFFFF
        return self.advertised_max

    def completion_fields(self) -> StatusFields:
        """Status fields of a command's final status: its window slot is free again."""
        self.in_flight -= 1
        return self.status_fields()

    def status_fields(self) -> StatusFields:
        stat_sn = self.stat_sn
        self.stat_sn = (self.stat_sn + 1) & 0xFFFFFFFF
        return {
            "stat_sn": stat_sn,
            "exp_cmd_sn": self.exp_cmd_sn,
            "max_cmd_sn": self.max_cmd_sn(),
        }

    async def run(self) -> None:
        login = TargetLogin(login_config(lambda i, t, s: Accept(), self.target))
        while not login.finished:
            request = await self.receive()
            assert isinstance(request, LoginRequest)
            await self.send(login.receive(request))
        if not login.complete:
            return
        self.target.logins += 1
        self.framer.max_recv_data_segment_length = login.config.max_recv_data_segment_length
        self.params = login.params
        self.stat_sn = login.stat_sn
        self.exp_cmd_sn = login.cmd_sn
        self.advertised_max = login.max_cmd_sn
        if self.target.garbage_after_login is not None:
            await self.stream.send_all(self.target.garbage_after_login)
            await trio.sleep(5)
            return
        async with trio.open_nursery() as nursery:
            await self._full_feature(nursery)
            nursery.cancel_scope.cancel()

    async def _full_feature(self, nursery: trio.Nursery) -> None:
        while True:
            pdu = await self.receive()
            if isinstance(pdu, ScsiCommand):
                if not pdu.immediate:
                    if sn_gt(pdu.cmd_sn, self.advertised_max):
                        self.target.window_violations.append(pdu.cmd_sn)
                    self.exp_cmd_sn = (pdu.cmd_sn + 1) & 0xFFFFFFFF
                    self.in_flight += 1
                if self.target.respond is not None:
                    nursery.start_soon(self.command, pdu)  # the hook may hold it a while
                else:
                    await self.command(pdu)
            elif isinstance(pdu, DataOut):
                await self.data_out(pdu)
            elif isinstance(pdu, NopOut):
                if pdu.itt != RESERVED_TAG:
                    await self.send(NopIn(itt=pdu.itt, ttt=RESERVED_TAG, **self.status_fields()))
                else:
                    self.target.nop_replies.append(pdu.ttt)
            elif isinstance(pdu, LogoutRequest):
                self.target.logouts += 1
                await self.send(LogoutResponse(itt=pdu.itt, time2wait=0, **self.status_fields()))
                return

    async def command(self, cmd: ScsiCommand) -> None:
        if self.target.respond is not None and await self.target.respond(self, cmd):
            return
        opcode = cmd.cdb[0]
        if opcode in (0x88, 0x8A):
            lba, blocks = struct.unpack_from(">QI", cmd.cdb, 2)
            offset, length = lba * BLOCK, blocks * BLOCK
            if opcode == 0x88:
                await self.send_read(cmd, bytes(self.target.disk[offset : offset + length]))
                await self.done()
                return
            write = _Write(cmd, bytearray(length), offset)
            write.take(0, cmd.data)
            self.pending_writes[cmd.itt] = write
            if cmd.final:  # no unsolicited Data-Out follows
                await self.advance(write)
            return
        elif opcode == 0x9E:
            data = struct.pack(">QI", len(self.target.disk) // BLOCK - 1, BLOCK).ljust(32, b"\0")
            await self.send(
                DataIn(
                    final=True,
                    status_present=True,
                    itt=cmd.itt,
                    data=data[: cmd.expected_data_transfer_length],
                    **self.completion_fields(),
                )
            )
            await self.done()
            return
        await self.send(ScsiResponse(itt=cmd.itt, status=0, **self.completion_fields()))
        await self.done()

    async def data_out(self, pdu: DataOut) -> None:
        write = self.pending_writes[pdu.itt]
        self.target.data_outs.append((pdu.ttt, pdu.buffer_offset, len(pdu.data)))
        write.take(pdu.buffer_offset, pdu.data)
        if pdu.final:  # the unsolicited burst or the R2T's burst is complete
            await self.advance(write)

    async def advance(self, write: _Write) -> None:
        """Ask for the next burst (one R2T at a time), or finish the write."""
        length = len(write.buffer)
        if write.received < length:
            burst = min(self.params.max_burst_length, length - write.received)
            await self.send(
                R2T(
                    itt=write.command.itt,
                    ttt=0x1000 + write.received // 512,
                    buffer_offset=write.received,
                    desired_data_transfer_length=burst,
                    stat_sn=self.stat_sn,
                    exp_cmd_sn=self.exp_cmd_sn,
                    max_cmd_sn=self.max_cmd_sn(),
                )
            )
            return
        del self.pending_writes[write.command.itt]
        self.target.disk[write.offset : write.offset + length] = write.buffer
        await self.send(ScsiResponse(itt=write.command.itt, status=0, **self.completion_fields()))
        await self.done()

    async def send_read(self, cmd: ScsiCommand, data: bytes) -> None:
        """Data-In PDUs within the initiator's MaxRecvDataSegmentLength, status in the last."""
        segment = self.params.initiator_max_recv_data_segment_length
        pdus: list[Pdu] = []
        for data_sn, start in enumerate(range(0, max(len(data), 1), segment)):
            chunk = data[start : start + segment]
            last = start + segment >= len(data)
            fields = self.completion_fields() if last else {
                "stat_sn": 0, "exp_cmd_sn": self.exp_cmd_sn,
                "max_cmd_sn": self.max_cmd_sn(),
            }  # fmt: skip
            pdus.append(
                DataIn(
                    final=last, status_present=last, itt=cmd.itt, data_sn=data_sn,
                    buffer_offset=start, data=chunk, **fields,
                )
            )  # fmt: skip
        await self.send(*pdus)

    async def done(self) -> None:
        self.target.commands += 1
        if self.target.after_command is not None:
            await self.target.after_command(self, self.target.commands)

    async def logout_request(self, within: int = 2) -> None:
        await self.send(
            AsyncMessage(
                async_event=AsyncEvent.LOGOUT_REQUEST,
                parameter3=within,
                **self.status_fields(),
            )
        )

    async def ping(self, ttt: int) -> None:
        await self.send(NopIn(itt=RESERVED_TAG, ttt=ttt, **self.status_fields()))


@dataclass
class Address:
    host: str
    port: int


@dataclass
class FakeRedirector:
    """Answers every login with a 0x0101 redirect to ``destination`` (changeable)."""

    destination: FakeTarget | Address
    host: str = "127.0.0.1"
    port: int = 0
    logins: int = 0

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    def _resolve(self, initiator: str, target: str | None, kind: SessionType) -> Redirect | Refuse:
        self.logins += 1
        return Redirect(Portal(self.destination.host, self.destination.port, 1).format())

    async def _connection(self, stream: trio.SocketStream) -> None:
        framer = PduFramer(receiving_from="initiator")
        login = TargetLogin(login_config(self._resolve))
        try:
            while not login.finished:
                while (pdu := framer.next_pdu()) is None:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    framer.feed(data)
                assert isinstance(pdu, LoginRequest)
                await stream.send_all(encode_pdu(login.receive(pdu)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


__all__ = ["IQN", "Address", "FakeRedirector", "FakeTarget", "SessionRequest"]
