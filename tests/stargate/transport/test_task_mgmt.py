"""`stargate.transport.task_mgmt` applies what `stargate.scsi.tmf.decide` says to the
CmdSN window: ABORT TASK of a command still held behind a gap counts its CmdSN as
received (``consider_received_cmd_sn``): the command never runs, and those behind it
run as soon as the gap before it fills."""

from __future__ import annotations

import trio

from iscsicore.pdu import (
    DataIn,
    ScsiResponse,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TmfFunction,
    TmfResponse,
)
from iscsicore.scsi.opcodes import ScsiStatus
from tests.stargate.client import (
    TEST_UNIT_READY,
    clear_unit_attention,
    logged_in,
    read10,
    start_stargate,
    write10,
)

BLOCK = 512
LBA = 21
QUIET = 0.3


async def test_abort_task_of_a_held_command_skips_its_cmd_sn(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    base = initiator.cmd_sn
    payload = b"\xab" * BLOCK
    held = initiator.command(
        write10(LBA, 1), write_data=payload, immediate_data=payload, cmd_sn=base + 1
    )
    after = initiator.command(TEST_UNIT_READY, cmd_sn=base + 2)
    await initiator.send(held)
    await initiator.send(after)
    assert await initiator.receive_or_none(QUIET) is None  # both wait for CmdSN base
    await initiator.send(
        TaskMgmtRequest(
            immediate=True,
            function=TmfFunction.ABORT_TASK,
            itt=950,
            referenced_task_tag=held.itt,
            cmd_sn=base + 3,
            ref_cmd_sn=held.cmd_sn,
        )
    )
    answer = await initiator.receive()
    assert isinstance(answer, TaskMgmtResponse) and answer.response == TmfResponse.COMPLETE
    assert answer.exp_cmd_sn == base  # the gap before it is still open
    gap = initiator.command(TEST_UNIT_READY, cmd_sn=base)
    await initiator.send(gap)
    first, second = await initiator.receive(), await initiator.receive()
    assert isinstance(first, ScsiResponse) and first.itt == gap.itt
    assert isinstance(second, ScsiResponse) and second.itt == after.itt
    assert second.exp_cmd_sn == base + 3  # base+1 counted as received
    assert await initiator.receive_or_none(QUIET) is None  # the aborted write: no status
    initiator.cmd_sn = base + 3
    read = initiator.command(read10(LBA, 1), read_length=BLOCK)
    await initiator.send(read)
    data_in = await initiator.receive()
    assert isinstance(data_in, DataIn) and data_in.status == ScsiStatus.GOOD
    assert bytes(data_in.data) == bytes(BLOCK)  # and never wrote
