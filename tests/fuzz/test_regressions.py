"""Bugs the fuzz targets found, pinned against the real stargate server on loopback."""

from __future__ import annotations

import logging
import struct

import pytest
import trio

from iscsicore.pdu import (
    R2T,
    RESERVED_TAG,
    DataOut,
    NopIn,
    NopOut,
    ScsiResponse,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TmfFunction,
    TmfResponse,
)
from iscsicore.scsi.opcodes import ScsiStatus
from iscsicore.seqnum import sn_add
from tests.stargate.client import (
    TEST_UNIT_READY,
    clear_unit_attention,
    logged_in,
    proposals,
    read10,
    start_stargate,
    write10,
)

RESIDUAL_MAX = 0xFFFFFFFF


def write16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x8A, 0, lba, blocks, 0, 0)


async def test_write_residual_beyond_32_bits_is_saturated(nursery: trio.Nursery) -> None:
    """A WRITE(16) for 0xffffffff blocks with a 512-byte EDTL: the CDB implies ~2 TiB, so
    the overflow residual does not fit the 32-bit Residual Count. The target wrote what
    the EDTL covers and must say so (residual overflow, count saturated) instead of
    failing to encode the response: that failure killed the connection, and when the
    command had been waiting for a queue slot, whichever connection freed the slot."""
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    command = initiator.command(
        write16(0, 0xFFFFFFFF), write_data=bytes(512), immediate_data=bytes(512), edtl=512
    )
    await initiator.send(command)
    response = await initiator.receive()
    assert isinstance(response, ScsiResponse) and response.itt == command.itt
    assert response.status == ScsiStatus.GOOD
    assert response.overflow and not response.underflow
    assert response.residual_count == RESIDUAL_MAX
    # The connection goes on.
    assert (await initiator.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD


async def test_command_failed_while_waiting_for_a_slot_does_not_leak_one(
    nursery: trio.Nursery,
) -> None:
    """Queue depth 1: WRITE A holds the slot waiting for its Data-Out; WRITE B, announcing
    unsolicited data, waits for a slot; B's Data-Out breaks the sequence, so B fails
    (CHECK CONDITION) while still in the waiting room. When A finishes, the queue used to
    hand its slot to the dead B, which never gave it back: every later command of every
    session waited forever. A remote initiator could take the whole queue down that way."""
    server = await start_stargate(nursery, queue_depth=1)
    initiator = await logged_in(server, proposals=proposals(initial_r2t=False))
    bystander = await logged_in(server, "vd2")
    await clear_unit_attention(initiator)
    await clear_unit_attention(bystander)
    payload = bytes([0x3C]) * 4096
    write_a = initiator.command(write10(0, 8), write_data=payload, immediate=True)
    await initiator.send(write_a)
    r2t = await initiator.receive()
    assert isinstance(r2t, R2T) and r2t.itt == write_a.itt
    write_b = initiator.command(write10(8, 1), edtl=512, final=False, immediate=True)
    await initiator.send(write_b)
    # Half of B's unsolicited burst, marked final: a data sequence error.
    await initiator.send(
        DataOut(final=True, itt=write_b.itt, ttt=RESERVED_TAG, data_sn=0, data=bytes(256))
    )
    failed_b = await initiator.collect(write_b.itt)
    assert failed_b.status == ScsiStatus.CHECK_CONDITION
    await initiator.send_data_out(write_a.itt, r2t.ttt, payload, 0, len(payload))
    assert (await initiator.collect(write_a.itt)).status == ScsiStatus.GOOD
    assert server.queue.in_flight == 0, "a slot is held by a command that already failed"
    # Nobody is locked out: another session's command gets its slot.
    assert (await bystander.scsi(TEST_UNIT_READY, timeout=3.0)).status == ScsiStatus.GOOD
    assert (await initiator.scsi(TEST_UNIT_READY, timeout=3.0)).status == ScsiStatus.GOOD


SYNCHRONIZE_CACHE_10 = bytes([0x35]) + bytes(9)


async def test_closing_with_a_queued_sync_command_does_not_crash_or_leak(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """Queue depth 1: WRITE A holds the slot waiting for its Data-Out, SYNCHRONIZE CACHE B
    waits for a slot, then the initiator goes away. Aborting A gave its slot to B before
    B was marked aborted; B ran and wanted to start its fdatasync in the connection's
    nursery, already closed: RuntimeError out of the connection's cleanup ("connection
    handler failed"), B's slot never given back, every other session locked out."""
    server = await start_stargate(nursery, queue_depth=1)
    initiator = await logged_in(server)
    bystander = await logged_in(server, "vd2")
    await clear_unit_attention(initiator)
    await clear_unit_attention(bystander)
    write_a = initiator.command(write10(0, 8), write_data=bytes(4096), immediate=True)
    await initiator.send(write_a)
    assert isinstance(await initiator.receive(), R2T)
    sync_b = initiator.command(SYNCHRONIZE_CACHE_10, immediate=True)
    await initiator.send(sync_b)
    # A ping answered: B has been handled (it waits for the slot A holds).
    await initiator.send(NopOut(immediate=True, itt=0x7777, ttt=RESERVED_TAG))
    assert isinstance(await initiator.receive(), NopIn)
    await initiator.close()
    with trio.fail_after(5):
        while len(server.all_connections()) > 1:
            await trio.sleep(0.02)
    assert (await bystander.scsi(TEST_UNIT_READY, timeout=3.0)).status == ScsiStatus.GOOD
    assert server.queue.in_flight == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_abort_task_set_does_not_run_a_waiting_command(nursery: trio.Nursery) -> None:
    """Queue depth 1: WRITE A holds the slot waiting for its Data-Out, READ B waits for a
    slot, then ABORT TASK SET. Aborting A gave its slot to B before B was marked aborted,
    so B ran and was answered although the task set it belonged to was aborted (SAM-5:
    every command of the nexus' task set is aborted, none completes)."""
    server = await start_stargate(nursery, queue_depth=1)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    write_a = initiator.command(write10(0, 8), write_data=bytes(4096), immediate=True)
    await initiator.send(write_a)
    assert isinstance(await initiator.receive(), R2T)
    read_b = initiator.command(read10(0, 1), read_length=512, immediate=True)
    await initiator.send(read_b)
    await initiator.send(
        TaskMgmtRequest(
            immediate=True,
            function=TmfFunction.ABORT_TASK_SET,
            itt=0x5555,
            # Past the immediate commands' CmdSN: they came before it, so they are aborted.
            cmd_sn=initiator.cmd_sn + 1,
            exp_stat_sn=initiator.exp_stat_sn,
        )
    )
    # The target counted that CmdSN as received (RFC 7143 section 3.2.2.1): go on after it.
    initiator.cmd_sn = sn_add(initiator.cmd_sn, 1)
    answers: list[object] = []
    while not answers or not isinstance(answers[-1], TaskMgmtResponse):
        answers.append(await initiator.receive())
    assert isinstance(answers[-1], TaskMgmtResponse)
    assert answers[-1].response == TmfResponse.COMPLETE
    aborted = {write_a.itt, read_b.itt}
    answered = [type(a).__name__ for a in answers if getattr(a, "itt", None) in aborted]
    assert not answered, f"answers for aborted tasks: {answered}"
    assert server.queue.in_flight == 0 and server.queue.waiting == 0
    assert (await initiator.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD
