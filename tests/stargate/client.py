"""A small, deliberately low-level iSCSI initiator for driving stargate PDU by PDU.

It speaks through the shared codec (`encode_pdu`, `PduFramer`) and login machine
(`InitiatorLogin`), but leaves every protocol decision to the test: which CmdSN, which
DataSN, whether to answer an R2T. `StargateUnderTest` starts a server on a loopback port with
memory-backed vDisks.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field
from typing import Any

import trio

from faults.forensics import Forensics
from faults.injector import FaultInjector
from iscsicore.chap import ChapSecrets
from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.keys import NONE
from iscsicore.login import InitiatorLogin, LoginDone, LoginFailed, LoginProposals
from iscsicore.pdu import (
    R2T,
    RESERVED_TAG,
    DataIn,
    DataOut,
    LoginRequest,
    NopIn,
    Pdu,
    ScsiCommand,
    ScsiResponse,
)
from stargate.hooks import ServerHooks
from stargate.scsi.lu import LogicalUnit
from stargate.scsi.reserve import vdisk_reservations
from stargate.server import ServerConfig, StargateServer
from stargate.stores.memory import MemoryStore
from stargate.target import ChapCredentials, TargetRegistry, VDiskTarget
from stargate.transport.config import ConnectionTimers
from topology.naming import target_name_for
from topology.vdisk import VDiskMeta

INITIATOR = "iqn.2026-11.test:initiator"
RECEIVE_TIMEOUT = 5.0

_isids = itertools.count(0x400000000001)


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])
TEST_UNIT_READY = bytes(6)


@dataclass
class CommandResult:
    status: int | None = None
    data: bytearray = field(default_factory=bytearray)
    sense: bytes = b""
    overflow: bool = False
    underflow: bool = False
    residual: int = 0
    pdus: list[Pdu] = field(default_factory=list)
    r2ts: list[R2T] = field(default_factory=list)
    collapsed: bool = False  # status came in the last Data-In


class TestInitiator:
    """One connection to a target."""

    __test__ = False  # not a pytest class

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.framer = PduFramer(receiving_from="target", max_recv_data_segment_length=1 << 24)
        self.header_digest = False
        self.data_digest = False
        self.cmd_sn = 0
        self.exp_stat_sn = 0
        self.max_cmd_sn = 0
        self.target_mrdsl = 8192
        self.params: Any = None
        self.tsih = 0
        self._itts = itertools.count(1)

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> TestInitiator:
        return cls(await trio.open_tcp_stream(host, port))

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)

    def next_itt(self) -> int:
        return next(self._itts)

    # -- raw PDUs ---------------------------------------------------------------------

    async def send(self, pdu: Pdu) -> None:
        await self.stream.send_all(
            encode_pdu(pdu, header_digest=self.header_digest, data_digest=self.data_digest)
        )

    async def receive(self, timeout: float = RECEIVE_TIMEOUT) -> Pdu:
        with trio.fail_after(timeout):
            while True:
                pdu = self.framer.next_pdu()
                if pdu is not None:
                    self._track(pdu)
                    return pdu
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("target closed the connection")
                self.framer.feed(data)

    async def receive_or_none(self, timeout: float) -> Pdu | None:
        try:
            return await self.receive(timeout)
        except trio.TooSlowError:
            return None

    async def closed_by_target(self, timeout: float = RECEIVE_TIMEOUT) -> bool:
        """True when the target closes the connection within ``timeout`` (PDUs skipped)."""
        with trio.move_on_after(timeout):
            try:
                while True:
                    await self.receive(timeout)
            except (EOFError, trio.BrokenResourceError):
                return True
        return False

    def _track(self, pdu: Pdu) -> None:
        stat_sn = getattr(pdu, "stat_sn", None)
        if isinstance(pdu, ScsiResponse) or (isinstance(pdu, DataIn) and pdu.status_present):
            assert stat_sn is not None
            self.exp_stat_sn = (stat_sn + 1) & 0xFFFFFFFF
        max_cmd_sn = getattr(pdu, "max_cmd_sn", None)
        if max_cmd_sn is not None and (max_cmd_sn - self.max_cmd_sn) & 0xFFFFFFFF < 1 << 31:
            self.max_cmd_sn = max_cmd_sn

    # -- login --------------------------------------------------------------------------

    async def login(
        self,
        target_name: str | None,
        *,
        initiator_name: str = INITIATOR,
        isid: int | None = None,
        chap: ChapSecrets | None = None,
        mutual_chap: ChapSecrets | None = None,
        proposals: LoginProposals | None = None,
        cmd_sn: int = 0,
    ) -> LoginDone | LoginFailed:
        machine = InitiatorLogin(
            initiator_name,
            target_name,
            isid if isid is not None else next(_isids),
            chap=chap,
            mutual_chap=mutual_chap,
            proposals=proposals or LoginProposals(),
            cmd_sn=cmd_sn,
        )
        request: Any = machine.start()
        while isinstance(request, LoginRequest):
            await self.send(request)
            response = await self.receive()
            request = machine.receive(response)  # type: ignore[arg-type]
        if isinstance(request, LoginDone):
            self.params = request.params
            self.tsih = request.tsih
            self.cmd_sn = request.exp_cmd_sn
            self.max_cmd_sn = request.max_cmd_sn
            self.exp_stat_sn = (request.stat_sn + 1) & 0xFFFFFFFF
            self.header_digest = request.params.header_digest
            self.data_digest = request.params.data_digest
            self.framer.header_digest = self.header_digest
            self.framer.data_digest = self.data_digest
            self.target_mrdsl = request.params.target_max_recv_data_segment_length
            return request
        assert isinstance(request, LoginFailed), request
        return request

    # -- SCSI ---------------------------------------------------------------------------

    def command(
        self,
        cdb: bytes,
        *,
        read_length: int = 0,
        write_data: bytes = b"",
        edtl: int | None = None,
        immediate_data: bytes | None = None,
        final: bool = True,
        cmd_sn: int | None = None,
        immediate: bool = False,
        lun: int = 0,
    ) -> ScsiCommand:
        """A SCSI Command PDU; consumes a CmdSN unless ``immediate``."""
        if edtl is None:
            edtl = read_length or len(write_data)
        command = ScsiCommand(
            immediate=immediate,
            final=final,
            read=read_length > 0,
            write=bool(write_data) or (edtl > 0 and not read_length),
            lun=lun,
            itt=self.next_itt(),
            expected_data_transfer_length=edtl,
            cmd_sn=self.cmd_sn if cmd_sn is None else cmd_sn,
            exp_stat_sn=self.exp_stat_sn,
            cdb=cdb.ljust(16, b"\x00"),
            data=immediate_data or b"",
        )
        if not immediate and cmd_sn is None:
            self.cmd_sn = (self.cmd_sn + 1) & 0xFFFFFFFF
        return command

    async def scsi(
        self,
        cdb: bytes,
        *,
        read_length: int = 0,
        write_data: bytes = b"",
        edtl: int | None = None,
        timeout: float = RECEIVE_TIMEOUT,
        lun: int = 0,
    ) -> CommandResult:
        """Run one command the way a well-behaved initiator would (immediate data,
        unsolicited data, R2T answers, all per the negotiated parameters); ``lun``: the
        raw LUN field (`iscsicore.pdu.encode_lun`)."""
        params = self.params
        edtl = edtl if edtl is not None else (read_length or len(write_data))
        immediate = b""
        unsolicited_end = 0
        if write_data:
            first_burst = min(params.first_burst_length, edtl)
            if params.immediate_data:
                immediate = write_data[: min(first_burst, self.target_mrdsl)]
            unsolicited_end = len(immediate) if params.initial_r2t else first_burst
        command = self.command(
            cdb,
            read_length=read_length,
            write_data=write_data,
            edtl=edtl,
            immediate_data=immediate,
            final=unsolicited_end <= len(immediate),
            lun=lun,
        )
        await self.send(command)
        if unsolicited_end > len(immediate):
            await self.send_data_out(
                command.itt, RESERVED_TAG, write_data, len(immediate), unsolicited_end
            )
        return await self.collect(command.itt, write_data, timeout=timeout)

    async def send_data_out(
        self,
        itt: int,
        ttt: int,
        data: bytes,
        start: int,
        end: int,
        *,
        data_sn_of: Any = None,
    ) -> None:
        """Data-Out PDUs for ``data[start:end]``; ``data_sn_of(index)`` may lie about DataSN."""
        offset, index = start, 0
        while offset < end:
            length = min(self.target_mrdsl, end - offset)
            await self.send(
                DataOut(
                    final=offset + length >= end,
                    itt=itt,
                    ttt=ttt,
                    exp_stat_sn=self.exp_stat_sn,
                    data_sn=data_sn_of(index) if data_sn_of else index,
                    buffer_offset=offset,
                    data=data[offset : offset + length],
                )
            )
            offset += length
            index += 1

    async def collect(
        self, itt: int, write_data: bytes = b"", *, timeout: float = RECEIVE_TIMEOUT
    ) -> CommandResult:
        """Receive until the status of ``itt``, answering its R2Ts from ``write_data``."""
        result = CommandResult()
        while True:
            pdu = await self.receive(timeout)
            result.pdus.append(pdu)
            if isinstance(pdu, R2T) and pdu.itt == itt:
                result.r2ts.append(pdu)
                end = pdu.buffer_offset + pdu.desired_data_transfer_length
                await self.send_data_out(itt, pdu.ttt, write_data, pdu.buffer_offset, end)
            elif isinstance(pdu, DataIn) and pdu.itt == itt:
                assert pdu.buffer_offset == len(result.data), "Data-In out of order"
                result.data += pdu.data
                if pdu.status_present:
                    result.status = pdu.status
                    result.overflow, result.underflow = pdu.overflow, pdu.underflow
                    result.residual = pdu.residual_count
                    result.collapsed = True
                    return result
            elif isinstance(pdu, ScsiResponse) and pdu.itt == itt:
                result.status = pdu.status
                result.overflow, result.underflow = pdu.overflow, pdu.underflow
                result.residual = pdu.residual_count
                if pdu.data:
                    (length,) = struct.unpack_from(">H", pdu.data)
                    result.sense = bytes(pdu.data[2 : 2 + length])
                return result
            elif isinstance(pdu, NopIn) and pdu.ttt != RESERVED_TAG:
                pass  # a ping: ignored here, tests of pings answer them themselves


async def clear_unit_attention(initiator: TestInitiator) -> None:
    """A new nexus starts with POWER ON / RESET: consume it so later checks see only theirs."""
    for _ in range(3):
        result = await initiator.scsi(TEST_UNIT_READY)
        if result.status == 0:
            return
    raise AssertionError("unit attention never cleared")


# ---------------------------------------------------------------------------------------
# Servers under test


def memory_target(
    vdisk_id: str,
    size: int = 8 << 20,
    *,
    allowed: frozenset[str] | None = None,
    chap: ChapCredentials | None = None,
    mutual_chap: ChapCredentials | None = None,
) -> VDiskTarget:
    meta = VDiskMeta(vdisk_id, size)
    store = MemoryStore(meta)
    reservations, unit_attentions = vdisk_reservations(None, vdisk_id)
    return VDiskTarget(
        vdisk_id,
        LogicalUnit(store, meta, reservations=reservations, unit_attentions=unit_attentions),
        block_size=512,
        allowed_initiators=allowed,
        chap=chap,
        mutual_chap=mutual_chap,
    )


async def start_stargate(
    nursery: trio.Nursery,
    *targets: VDiskTarget,
    queue_depth: int = 128,
    login_timeout: float = 5.0,
    timers: ConnectionTimers | None = None,
    eager_send_every: int = 0,
    hooks: ServerHooks | None = None,
) -> StargateServer:
    registry = TargetRegistry()
    for target in targets or (memory_target("vd1"), memory_target("vd2")):
        registry.add(target)
    server = StargateServer(
        registry,
        ServerConfig(
            host="127.0.0.1",
            port=0,
            queue_depth=queue_depth,
            login_timeout=login_timeout,
            timers=timers or ConnectionTimers(),
            eager_send_every=eager_send_every,
        ),
        hooks,
    )
    await nursery.start(server.serve)
    return server


def recorded_by(forensics: Forensics) -> ServerHooks:
    """Server hooks that record its sessions and the faults fired in ``forensics``."""
    return ServerHooks(observer=forensics, faults=FaultInjector(listeners=[forensics.fault_fired]))


async def logged_in(
    server: StargateServer,
    vdisk_id: str = "vd1",
    *,
    proposals: LoginProposals | None = None,
    **login_args: Any,
) -> TestInitiator:
    assert server.port is not None
    initiator = await TestInitiator.connect(server.port)
    outcome = await initiator.login(target_name_for(vdisk_id), proposals=proposals, **login_args)
    assert isinstance(outcome, LoginDone), outcome
    return initiator


def proposals(**overrides: Any) -> LoginProposals:
    values: dict[str, Any] = {"header_digest": (NONE,), "data_digest": (NONE,)}
    values.update(overrides)
    return LoginProposals(**values)
