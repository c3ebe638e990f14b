"""SCSI tasks (`stargate.tasks`): what a write CDB implies about its Data-Out, a task's state
from arrival to status, and the connection's task table as an initiator sees it (a task
waiting for a slot, aborted; a duplicate ITT; tasks of a connection that goes away)."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

import pytest
import trio

from iscsicore.fullfeature.sequence import DataSequence
from iscsicore.pdu import (
    R2T,
    RESERVED_TAG,
    DataIn,
    Reject,
    RejectReason,
    ScsiCommand,
    ScsiResponse,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TmfFunction,
    TmfResponse,
)
from iscsicore.scsi.opcodes import ScsiStatus
from stargate.server import StargateServer
from stargate.stats import IoKind
from stargate.tasks import (
    IO_KINDS,
    WRITE_LENGTH_OPCODES,
    ScsiTask,
    TaskPhase,
    implied_write_blocks,
    with_write_blocks,
)
from stargate.transport.lun_routes import LunRoute
from stargate.transport.runner import FullFeatureConnection
from tests.stargate.client import (
    TEST_UNIT_READY,
    TestInitiator,
    clear_unit_attention,
    logged_in,
    proposals,
    read10,
    start_stargate,
    write10,
)

# The CDB layouts written out independently of `iscsicore.scsi.cdb.BLOCK_CDBS`, so that a
# wrong entry there shows here: (opcode, LBA, TRANSFER LENGTH) -> CDB.


def _cdb10(opcode: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", opcode, 0, 0x1234, 0, blocks, 0)


def _cdb12(opcode: int, blocks: int) -> bytes:
    return struct.pack(">BBIIBB", opcode, 0, 0x1234, blocks, 0, 0)


def _cdb16(opcode: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", opcode, 0, 0x1234, blocks, 0, 0)


WRITES = [
    _cdb10(0x2A, 300),  # WRITE(10)
    _cdb10(0x2E, 300),  # WRITE AND VERIFY(10)
    _cdb12(0xAA, 70000),  # WRITE(12)
    _cdb12(0xAE, 70000),  # WRITE AND VERIFY(12)
    _cdb16(0x8A, 70000),  # WRITE(16)
    _cdb16(0x8E, 70000),  # WRITE AND VERIFY(16)
    _cdb16(0x8B, 70000),  # ORWRITE(16)
]


@pytest.mark.parametrize("cdb", WRITES, ids=lambda cdb: f"{cdb[0]:#04x}")
def test_write_cdbs_imply_their_transfer_length(cdb: bytes) -> None:
    assert cdb[0] in WRITE_LENGTH_OPCODES
    blocks = 300 if len(cdb) == 10 else 70000
    assert implied_write_blocks(cdb) == blocks
    patched = with_write_blocks(cdb, 8)
    assert patched is not None and implied_write_blocks(patched) == 8
    # Only the length changes: opcode, LBA and the rest stay.
    assert len(patched) == len(cdb) and patched[:6] == cdb[:6] and patched[-1] == cdb[-1]
    assert IO_KINDS[cdb[0]] is IoKind.WRITE


def test_write6_and_compare_and_write_have_their_own_rules() -> None:
    assert implied_write_blocks(bytes([0x0A, 0, 0, 0, 16, 0])) == 16
    assert implied_write_blocks(bytes([0x0A, 0, 0, 0, 0, 0])) == 256  # 0 means 256 blocks
    # COMPARE AND WRITE: NUMBER OF LOGICAL BLOCKS at byte 13; compare + write data follow.
    compare_and_write = bytearray(16)
    compare_and_write[0], compare_and_write[13] = 0x89, 3
    assert implied_write_blocks(bytes(compare_and_write)) == 6
    # Neither can be rewritten to another length.
    assert with_write_blocks(bytes([0x0A, 0, 0, 0, 16, 0]), 8) is None
    assert with_write_blocks(bytes(compare_and_write), 1) is None
    assert IO_KINDS[0x0A] is IoKind.WRITE and 0x89 not in IO_KINDS


def test_reads_and_other_commands_imply_no_data_out() -> None:
    for cdb in (read10(0, 8), bytes([0x08, 0, 0, 0, 8, 0]), TEST_UNIT_READY):
        assert implied_write_blocks(cdb) is None
        assert with_write_blocks(cdb, 1) is None
    assert implied_write_blocks(_cdb10(0x41, 4)) is None  # WRITE SAME: one block of data
    for opcode in (0x08, 0x28, 0xA8, 0x88):
        assert IO_KINDS[opcode] is IoKind.READ
    assert 0x00 not in IO_KINDS and 0x12 not in IO_KINDS  # TUR, INQUIRY: other


# ---- one task on a real connection ---------------------------------------------------------------


async def _connection_of(server: StargateServer, initiator: TestInitiator) -> FullFeatureConnection:
    """The server's connection of a session (registered just after the login answer)."""
    with trio.fail_after(3):
        while True:
            found = [c for c in server.all_connections() if c.session.tsih == initiator.tsih]
            if found:
                (connection,) = found
                return connection
            await trio.sleep(0.01)


async def _status_of(initiator: TestInitiator, itt: int) -> int:
    """The status the target sends for ``itt`` (PDUs of other tasks skipped, bounded)."""
    for _ in range(100):
        pdu = await initiator.receive(timeout=3)
        if isinstance(pdu, ScsiResponse) and pdu.itt == itt:
            return pdu.status
        if isinstance(pdu, DataIn) and pdu.itt == itt and pdu.status_present:
            return pdu.status
    raise AssertionError(f"no status for ITT {itt:#x}")


async def _nothing_for(initiator: TestInitiator, itt: int, seconds: float) -> None:
    """No PDU about ``itt`` arrives within ``seconds`` (window updates may)."""
    with trio.move_on_after(seconds):
        for _ in range(100):
            pdu = await initiator.receive(timeout=seconds + 5)  # the outer scope ends it
            assert getattr(pdu, "itt", None) != itt, pdu


def _lun0(connection: FullFeatureConnection) -> LunRoute:
    assert connection.routes is not None
    return connection.routes.routes[0]


async def test_task_state_from_arrival(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    connection = await _connection_of(server, initiator)
    # Tasks made here are never sent: their commands take no CmdSN of the session.
    command = initiator.command(write10(8, 2), write_data=bytes(1024), cmd_sn=initiator.cmd_sn)
    task = ScsiTask(connection, command, command.cdb, _lun0(connection))
    assert (task.itt, task.edtl, task.kind) == (command.itt, 1024, IoKind.WRITE)
    assert task.phase is TaskPhase.WAITING_FOR_SLOT and not task.has_slot
    assert task.tenant is connection.tenant and task.tenant is not None
    assert not task.cancelled and task.data_complete  # nothing needed yet
    task.needed = 1024
    assert task.buffer_bytes == 1024 and not task.data_complete
    task.received = 1024
    assert task.data_complete
    task.unsolicited = DataSequence(RESERVED_TAG, 1024, 1024)
    assert not task.data_complete  # its unsolicited sequence has not ended
    task.aborted = True
    assert task.cancelled
    read = initiator.command(read10(0, 1), read_length=512, cmd_sn=initiator.cmd_sn)
    other = ScsiTask(connection, read, read.cdb, _lun0(connection))
    assert other.kind is IoKind.READ and not other.cancelled
    other.phase = TaskPhase.DONE  # failed while it waited: never to be dispatched
    assert other.cancelled


async def test_dispatch_runs_the_task_in_the_slot_it_was_given(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    connection = await _connection_of(server, initiator)
    command = initiator.command(read10(0, 1), read_length=512, cmd_sn=initiator.cmd_sn)
    task = ScsiTask(connection, command, command.cdb, _lun0(connection))
    assert connection.stats is not None
    connection.stats.command_started()  # as the connection counts a task it starts
    assert server.queue.admit_now(connection.vdisk_key, 0, task.tenant)  # the queue's slot
    task.dispatch()
    assert task.has_slot is False and task.phase is TaskPhase.DONE
    assert await _status_of(initiator, command.itt) == ScsiStatus.GOOD
    assert server.queue.in_flight == 0  # the slot went back with the status


async def test_refuse_answers_a_waiting_task_without_running_it(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    connection = await _connection_of(server, initiator)
    command = initiator.command(
        write10(0, 1),
        write_data=b"\xee" * 512,
        immediate_data=b"\xee" * 512,
        cmd_sn=initiator.cmd_sn,
    )
    task = ScsiTask(connection, command, command.cdb, _lun0(connection))
    assert connection.stats is not None
    connection.stats.command_started()  # as the connection counts a task it starts
    task.refuse(ScsiStatus.BUSY)
    assert task.phase is TaskPhase.DONE and task.cancelled
    assert await _status_of(initiator, command.itt) == ScsiStatus.BUSY
    check = await initiator.scsi(read10(0, 1), read_length=512)
    assert check.status == ScsiStatus.GOOD and bytes(check.data) == bytes(512)  # never written


# ---- the task table, seen from the wire ---------------------------------------------------------


async def _write_waiting_for_data(initiator: TestInitiator) -> tuple[ScsiCommand, R2T]:
    """A WRITE that holds a slot while the target waits for its Data-Out."""
    command = initiator.command(write10(0, 8), write_data=bytes(4096))
    await initiator.send(command)
    r2t = await initiator.receive()
    assert isinstance(r2t, R2T) and r2t.itt == command.itt
    return command, r2t


async def _abort(initiator: TestInitiator, command: ScsiCommand, itt: int) -> TaskMgmtResponse:
    await initiator.send(
        TaskMgmtRequest(
            function=TmfFunction.ABORT_TASK,
            itt=itt,
            referenced_task_tag=command.itt,
            cmd_sn=initiator.cmd_sn,
            ref_cmd_sn=command.cmd_sn,
        )
    )
    for _ in range(10):
        response = await initiator.receive()
        if isinstance(response, TaskMgmtResponse):
            return response
    raise AssertionError("no task management response")


async def _until(predicate: Callable[[], bool], what: str) -> None:
    with trio.move_on_after(3):
        while not predicate():
            await trio.sleep(0.01)
    assert predicate(), f"not within 3 s: {what}"


async def test_aborting_a_task_that_waits_for_a_slot(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery, queue_depth=1)
    no_unsolicited = proposals(initial_r2t=True, immediate_data=False)
    holder = await logged_in(server, "vd1", proposals=no_unsolicited)
    waiter = await logged_in(server, "vd2")
    await clear_unit_attention(holder)
    await clear_unit_attention(waiter)
    write, r2t = await _write_waiting_for_data(holder)
    assert server.queue.in_flight == 1

    read = waiter.command(read10(0, 8), read_length=4096)
    await waiter.send(read)
    await _until(lambda: server.queue.waiting == 1, "the read waits for the slot")
    waiting = await _connection_of(server, waiter)
    assert waiting.outstanding_tasks == 1
    await _nothing_for(waiter, read.itt, 0.1)  # no status while it waits

    response = await _abort(waiter, read, itt=0x5000)
    assert response.itt == 0x5000 and response.response == TmfResponse.COMPLETE
    assert waiting.outstanding_tasks == 0 and server.queue.waiting == 0
    assert server.queue.in_flight == 1  # the holder's slot is untouched

    await holder.send_data_out(write.itt, r2t.ttt, bytes(4096), 0, 4096)
    assert await _status_of(holder, write.itt) == ScsiStatus.GOOD
    assert server.queue.in_flight == 0
    # The aborted read never runs, even now that the slot is free, and gets no status.
    await _nothing_for(waiter, read.itt, 0.3)
    assert (await waiter.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD
    # Aborting it again: it is gone from the task table.
    again = await _abort(waiter, read, itt=0x5001)
    assert again.response == TmfResponse.TASK_DOES_NOT_EXIST


async def test_an_itt_in_use_is_rejected_and_the_task_keeps_it(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server, proposals=proposals(initial_r2t=True, immediate_data=False))
    await clear_unit_attention(initiator)
    write, r2t = await _write_waiting_for_data(initiator)
    connection = await _connection_of(server, initiator)
    assert connection.outstanding_tasks == 1
    duplicate = dataclasses.replace(initiator.command(TEST_UNIT_READY), itt=write.itt)
    await initiator.send(duplicate)
    reject = await initiator.receive()
    assert isinstance(reject, Reject) and reject.reason == RejectReason.TASK_IN_PROGRESS
    assert connection.outstanding_tasks == 1
    await initiator.send_data_out(write.itt, r2t.ttt, b"\x5a" * 4096, 0, 4096)
    assert await _status_of(initiator, write.itt) == ScsiStatus.GOOD
    assert connection.outstanding_tasks == 0
    check = await initiator.scsi(read10(0, 8), read_length=4096)
    assert bytes(check.data) == b"\x5a" * 4096  # the original task's data, written once


async def test_tasks_of_a_closed_connection_free_their_slots(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery, queue_depth=1)
    no_unsolicited = proposals(initial_r2t=True, immediate_data=False)
    holder = await logged_in(server, "vd1", proposals=no_unsolicited)
    waiter = await logged_in(server, "vd2")
    await clear_unit_attention(holder)
    await clear_unit_attention(waiter)
    await _write_waiting_for_data(holder)
    await waiter.send(waiter.command(read10(0, 8), read_length=4096))
    await _until(lambda: server.queue.waiting == 1, "the read waits for the slot")

    await waiter.close()
    await _until(lambda: server.queue.waiting == 0, "the waiting task is dropped")
    assert server.queue.in_flight == 1
    await holder.close()
    await _until(lambda: server.queue.in_flight == 0, "the held slot is given back")
    await _until(lambda: not server.all_connections(), "both connections are gone")
    fresh = await logged_in(server)
    await clear_unit_attention(fresh)
    assert (await fresh.scsi(read10(0, 8), read_length=4096)).status == ScsiStatus.GOOD
