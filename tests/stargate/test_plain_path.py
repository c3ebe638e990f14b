"""The connection's plain READ/WRITE path (`FullFeatureConnection._run_plain`) and the
queue's `admit_now`: the same bytes out, the same counters, as the general task path."""

from __future__ import annotations

import struct

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.keys import SessionParams, SessionType
from iscsicore.pdu import ScsiCommand
from iscsicore.scsi.opcodes import ScsiOp
from stargate.queue import Admission, CommandQueue, QueuedCommand, Tenant
from stargate.scsi.command import Nexus
from stargate.scsi.lu import LogicalUnit
from stargate.scsi.reserve import vdisk_reservations
from stargate.session import Session
from stargate.stores import MemoryStore
from stargate.target import VDiskTarget
from stargate.transport import commands as commands_module
from stargate.transport.runner import FullFeatureConnection
from topology.vdisk import VDiskMeta

BLOCK = 512
BLOCKS = 256
NEXUS = Nexus("iqn.2026-11.test:i,i,0x1", "iqn.2010-06.com.nutanix:vmdisk-vd1,t,0x1")


class _Silent:
    async def receive_some(self, max_bytes: int) -> bytes:
        return b""

    async def send_all(self, data: bytes | bytearray) -> None:
        pass


class _Command:
    """A stand-in queued command."""

    def __init__(self, buffer_bytes: int = 0) -> None:
        self.cancelled = False
        self.buffer_bytes = buffer_bytes
        self.tenant: Tenant | None = None
        self.dispatched = False

    def dispatch(self) -> None:
        self.dispatched = True


def test_admit_now_is_admit_run_without_a_command() -> None:
    queue = CommandQueue(2)
    assert queue.admit_now("a", 10)
    assert (queue.in_flight, queue.buffered_bytes) == (1, 10)
    assert queue.admit("a", _Command()) is Admission.RUN
    assert not queue.admit_now("a")  # full
    waiting = _Command()
    assert queue.admit("a", waiting) is Admission.QUEUED
    queue.release(10)
    assert waiting.dispatched
    assert not queue.admit_now("a")  # full again (the waiting one got the slot)
    queue.release()
    assert queue.admit_now("b")  # nobody waits, a slot is free


class _Gate:
    """An admission gate open only for vDisk "open"; it keeps what it holds back."""

    def __init__(self) -> None:
        self.held: list[tuple[str, QueuedCommand]] = []
        self.forgotten = 0

    def is_open(self, vdisk: str) -> bool:
        return vdisk == "open"

    def hold(self, vdisk: str, command: QueuedCommand) -> None:
        self.held.append((vdisk, command))

    def forget_cancelled(self) -> None:
        self.forgotten += 1


def test_admit_now_never_bypasses_the_gate() -> None:
    gate = _Gate()
    queue = CommandQueue(8, gate=gate)
    assert not queue.admit_now("closed")
    held = _Command(7)
    assert queue.admit("closed", held) is Admission.QUEUED
    assert gate.held == [("closed", held)] and not held.dispatched and queue.in_flight == 0
    assert queue.admit_now("open", 5)
    assert (queue.in_flight, queue.buffered_bytes) == (1, 5)
    queue.admit_held("closed", held)  # the gate lets it in: a slot is free, it runs
    assert held.dispatched and (queue.in_flight, queue.buffered_bytes) == (2, 12)
    queue.forget_cancelled()
    assert gate.forgotten == 1


def _unit(fresh_nexus: bool) -> tuple[LogicalUnit, VDiskTarget]:
    meta = VDiskMeta("vd1", BLOCKS * BLOCK, block_size=BLOCK)
    reservations, unit_attentions = vdisk_reservations(None, "vd1")
    lu = LogicalUnit(
        MemoryStore(meta), meta, reservations=reservations, unit_attentions=unit_attentions
    )
    lu.store.write(0, bytes(range(256)) * (BLOCKS * BLOCK // 256))
    if not fresh_nexus:
        lu.execute(bytes(6), b"", NEXUS)
    return lu, VDiskTarget("vd1", lu, block_size=BLOCK)


async def _serve(commands: list[ScsiCommand], fresh_nexus: bool) -> tuple[bytes, dict, bytes]:
    lu, target = _unit(fresh_nexus)
    session = Session(
        initiator_name="iqn.2026-11.test:i",
        isid=1,
        tsih=1,
        session_type=SessionType.NORMAL,
        target=target,
        exp_cmd_sn=1,
    )
    params = SessionParams()
    params.initiator_max_recv_data_segment_length = 8192
    framer = PduFramer(receiving_from="initiator", max_recv_data_segment_length=1 << 20)
    connection = FullFeatureConnection(
        _Silent(), framer, session, params, CommandQueue(64), nexus=NEXUS, cid=0, stat_sn=7
    )
    framer.feed(b"".join(encode_pdu(command) for command in commands))
    handlers = connection._handlers()
    for _ in range(len(commands) + 1):
        if not connection._handle_buffered_pdus(handlers):
            break
    stats = target.stats.snapshot()
    for key in ("uptime_s", "latency"):
        stats.pop(key)
    return bytes(connection._out), stats, lu.store.read(0, BLOCKS * BLOCK)


def _cdb(opcode: int, lba: int, blocks: int, flags: int) -> bytes:
    if opcode in (ScsiOp.READ_10, ScsiOp.WRITE_10):
        return struct.pack(">BBIBHB", opcode, flags, lba, 0, blocks, 0) + bytes(6)
    return struct.pack(">BBQIBB", opcode, flags, lba, blocks, 0, 0)


@st.composite
def commands(draw: st.DrawFn) -> list[ScsiCommand]:
    result = []
    for index in range(draw(st.integers(1, 6))):
        opcode = draw(
            st.sampled_from(
                [
                    ScsiOp.READ_10,
                    ScsiOp.READ_16,
                    ScsiOp.WRITE_10,
                    ScsiOp.WRITE_16,
                    ScsiOp.TEST_UNIT_READY,
                ]
            )
        )
        lba = draw(st.sampled_from([0, 8, BLOCKS - 8, BLOCKS - 1, BLOCKS]))
        blocks = draw(st.sampled_from([0, 1, 8, 17]))
        write = opcode in (ScsiOp.WRITE_10, ScsiOp.WRITE_16)
        edtl = draw(
            st.sampled_from([blocks * BLOCK, blocks * BLOCK, 0, 4096, blocks * BLOCK + 512])
        )
        data = b""
        if write:
            data = bytes([index + 1]) * min(edtl, draw(st.sampled_from([edtl, edtl, BLOCK])))
        cdb = bytes(16) if opcode == ScsiOp.TEST_UNIT_READY else _cdb(opcode, lba, blocks, 0)
        result.append(
            ScsiCommand(
                immediate=False,
                final=len(data) == edtl or not write,
                read=not write and opcode != ScsiOp.TEST_UNIT_READY,
                write=write,
                lun=draw(st.sampled_from([0, 0, 0, 1 << 48])),
                itt=index + 1,
                expected_data_transfer_length=edtl,
                cmd_sn=index + 1,
                cdb=cdb,
                data=data,
            )
        )
    return result


@settings(deadline=None, max_examples=200)
@given(batch=commands(), fresh_nexus=st.booleans())
def test_plain_path_sends_what_the_general_path_sends(
    batch: list[ScsiCommand], fresh_nexus: bool
) -> None:
    plain = trio.run(_serve, batch, fresh_nexus)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(commands_module, "PLAIN_READS", frozenset())
        patch.setattr(commands_module, "PLAIN_WRITE_BLOCKS", {})
        general = trio.run(_serve, batch, fresh_nexus)
    assert plain == general
