"""The remaining fault kinds through the Python API, on the wire: digests, the CmdSN window,
R2Ts, task management, Data-In cut short, asynchronous messages, a paused network."""

from __future__ import annotations

import time

import pytest
import trio

from faults import Delay, Fault, FaultKind
from iscsicore.errors import IscsiProtocolError
from iscsicore.pdu import (
    AsyncMessage,
    DataIn,
    NopIn,
    ScsiResponse,
    TaskMgmtRequest,
    TaskMgmtResponse,
)
from tests.stargate.client import (
    TestInitiator,
    clear_unit_attention,
    logged_in,
    proposals,
    read10,
    start_stargate,
    write10,
)
from topology.naming import target_name_for


async def _ready(server, **login: object) -> TestInitiator:
    initiator = await logged_in(server, **login)  # type: ignore[arg-type]
    await clear_unit_attention(initiator)
    return initiator


async def test_corrupt_header_digest_is_caught_by_the_initiator(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server, proposals=proposals(header_digest=("CRC32C",)))
    server.faults.add(Fault(FaultKind.CORRUPT_HEADER_DIGEST, pdu_opcodes=(0x01,), count=1))
    await initiator.send(initiator.command(read10(0, 1), read_length=512))
    with pytest.raises(IscsiProtocolError, match=r"(?i)digest"):
        await initiator.receive()


async def test_frozen_window_stops_max_cmd_sn_then_reopens(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server)
    server.faults.add(Fault(FaultKind.FREEZE_WINDOW, duration=1.0, count=1))
    first = await initiator.scsi(read10(0, 1), read_length=512)
    frozen = initiator.max_cmd_sn
    for _ in range(3):
        await initiator.scsi(read10(0, 1), read_length=512)
    assert initiator.max_cmd_sn == frozen and first.status == 0
    with trio.fail_after(5):  # the NOP-In that reopens it
        while True:
            pdu = await initiator.receive(5)
            if isinstance(pdu, NopIn) and (pdu.max_cmd_sn - frozen) & 0xFFFFFFFF > 0:
                break


async def test_withheld_and_delayed_r2ts(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server, proposals=proposals(initial_r2t=True, immediate_data=False))
    data = b"r" * 8192
    server.faults.add(Fault(FaultKind.WITHHOLD_R2T, count=1))
    held = initiator.command(write10(0, 16), write_data=data)
    await initiator.send(held)
    assert await initiator.receive_or_none(1.0) is None  # no R2T, no status
    server.faults.add(Fault(FaultKind.DELAY_R2T, delay=Delay(0.8), count=1))
    started = time.monotonic()
    result = await initiator.scsi(write10(100, 16), write_data=data, timeout=10)
    assert result.status == 0 and result.r2ts
    assert time.monotonic() - started >= 0.7


async def test_swallowed_task_management(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server)
    server.faults.add(Fault(FaultKind.SWALLOW_TMF, count=1))
    tmf = TaskMgmtRequest(function=5, itt=initiator.next_itt(), cmd_sn=initiator.cmd_sn,
                          exp_stat_sn=initiator.exp_stat_sn)  # fmt: skip  # LUN RESET
    await initiator.send(tmf)
    assert await initiator.receive_or_none(1.0) is None
    await initiator.send(tmf)  # count=1: the retry is answered
    answer = await initiator.receive(5)
    assert isinstance(answer, TaskMgmtResponse) and answer.itt == tmf.itt


async def test_drop_in_the_middle_of_a_data_in_sequence(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server)
    server.faults.add(Fault(FaultKind.DROP_MID_DATA_IN, count=1))
    await initiator.send(initiator.command(read10(0, 256), read_length=128 * 1024))
    received = 0
    with pytest.raises((EOFError, trio.BrokenResourceError)):
        while True:
            pdu = await initiator.receive(5)
            assert not isinstance(pdu, ScsiResponse)
            assert isinstance(pdu, DataIn) and not pdu.status_present
            received += len(pdu.data)
    assert 0 < received < 128 * 1024


async def test_async_drop_session_with_chosen_times(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server)
    server.faults.add(Fault(FaultKind.ASYNC_DROP_SESSION, vdisk="vd1", time2wait=7,
                            time2retain=3))  # fmt: skip
    message = await initiator.receive(5)
    assert isinstance(message, AsyncMessage) and message.async_event == 3
    assert (message.parameter2, message.parameter3) == (7, 3)
    assert await initiator.closed_by_target(5)


async def test_network_pause_blackholes_old_and_new_connections(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    old = await _ready(server)
    server.faults.add(Fault(FaultKind.NETWORK_PAUSE, duration=2.0))
    with trio.fail_after(5):
        while not server.faults.network_paused:
            await trio.sleep(0.02)
    await old.send(old.command(read10(0, 1), read_length=512))
    assert await old.receive_or_none(1.0) is None
    assert server.port is not None
    new = await TestInitiator.connect(server.port)
    with trio.move_on_after(1.0) as timeout:  # the login is never answered
        await new.login(target_name_for("vd1"))
    assert timeout.cancelled_caught
    await new.close()
    with trio.fail_after(10):  # the pause lasts `duration`
        while server.faults.network_paused:
            await trio.sleep(0.05)
    after = await _ready(server)
    assert (await after.scsi(read10(0, 1), read_length=512)).status == 0
