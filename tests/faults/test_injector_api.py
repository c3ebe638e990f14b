"""The fault engine through the Python API, against a real stargate on loopback, driven
PDU by PDU by the tests' own initiator (each test can fail: it checks what the wire says)."""

from __future__ import annotations

import time

import trio

from faults import Delay, DropMode, Fault, FaultKind, IoClass
from iscsicore.login import LoginFailed
from iscsicore.pdu import RESERVED_TAG, DataIn, NopIn, NopOut, Reject, ScsiResponse
from tests.stargate.client import (
    TestInitiator,
    clear_unit_attention,
    logged_in,
    read10,
    start_stargate,
    write10,
)
from topology.naming import target_name_for

GOOD, CHECK_CONDITION, BUSY, RESERVATION_CONFLICT, TASK_SET_FULL = 0, 2, 8, 0x18, 0x28


async def _ready(server, vdisk: str = "vd1") -> TestInitiator:
    initiator = await logged_in(server, vdisk)
    await clear_unit_attention(initiator)
    return initiator


async def test_status_faults_match_opcode_and_lba_range(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server)
    server.faults.add(
        Fault(FaultKind.CHECK_CONDITION, vdisk="vd1", opcodes=(0x28,), lba=(100, 199))
    )
    inside = await initiator.scsi(read10(150, 8), read_length=4096)
    assert inside.status == CHECK_CONDITION
    assert inside.sense[2] & 0x0F == 0x03 and inside.sense[12:14] == b"\x11\x00"
    overlapping = await initiator.scsi(read10(96, 8), read_length=4096)
    assert overlapping.status == CHECK_CONDITION
    outside = await initiator.scsi(read10(200, 8), read_length=4096)
    assert outside.status == GOOD and len(outside.data) == 4096
    write = await initiator.scsi(write10(150, 1), write_data=b"x" * 512)
    assert write.status == GOOD  # the opcode does not match
    assert [e.kind for e in server.faults.events] == ["check_condition"] * 2


async def test_count_skip_and_status_kinds(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server)
    for kind, status in (
        (FaultKind.BUSY, BUSY),
        (FaultKind.TASK_SET_FULL, TASK_SET_FULL),
        (FaultKind.RESERVATION_CONFLICT, RESERVATION_CONFLICT),
    ):
        server.faults.add(Fault(kind, skip=1, count=2))
        results = [(await initiator.scsi(read10(0, 1), read_length=512)).status for _ in range(4)]
        assert results == [GOOD, status, status, GOOD], kind
        assert not server.faults.armed  # exhausted faults disarm themselves


async def test_probability_is_reproducible_with_a_seed(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server)
    runs = []
    for _ in range(2):
        server.faults.add(Fault(FaultKind.BUSY, probability=0.5, seed=7, count=100))
        statuses = [(await initiator.scsi(read10(0, 1), read_length=512)).status for _ in range(20)]
        server.faults.clear()
        runs.append(statuses)
    assert runs[0] == runs[1] and BUSY in runs[0] and GOOD in runs[0]


async def test_a_delayed_vdisk_does_not_stall_another(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    slow = await _ready(server, "vd1")
    fast = await _ready(server, "vd2")
    server.faults.add(Fault(FaultKind.DELAY, vdisk="vd1", io=IoClass.READ, delay=Delay(1.5)))
    timings: dict[str, float] = {}

    async def timed(name: str, initiator: TestInitiator) -> None:
        started = time.monotonic()
        result = await initiator.scsi(read10(0, 8), read_length=4096, timeout=20)
        assert result.status == GOOD and len(result.data) == 4096
        timings[name] = time.monotonic() - started

    async with trio.open_nursery() as inner:
        inner.start_soon(timed, "slow", slow)
        await trio.sleep(0.05)
        inner.start_soon(timed, "fast", fast)
    assert timings["slow"] >= 1.4
    assert timings["fast"] < 1.0
    # Writes are not delayed by a read delay.
    started = time.monotonic()
    assert (await slow.scsi(write10(0, 1), write_data=b"w" * 512)).status == GOOD
    assert time.monotonic() - started < 1.0


async def test_short_transfer_reports_an_underflow(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server)
    server.faults.add(Fault(FaultKind.SHORT_TRANSFER, fraction=0.5, count=1))
    result = await initiator.scsi(read10(0, 8), read_length=4096)
    assert result.status == GOOD
    assert len(result.data) == 2048 and result.underflow and result.residual == 2048


async def test_hung_command_never_answers_but_the_session_lives(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server)
    server.faults.add(Fault(FaultKind.HANG, count=1))
    command = initiator.command(read10(0, 1), read_length=512)
    await initiator.send(command)
    assert await initiator.receive_or_none(1.0) is None
    ping = NopOut(immediate=True, itt=initiator.next_itt(), ttt=RESERVED_TAG,
                  cmd_sn=initiator.cmd_sn, exp_stat_sn=initiator.exp_stat_sn)  # fmt: skip
    await initiator.send(ping)
    answer = await initiator.receive(5)
    assert isinstance(answer, NopIn) and answer.itt == ping.itt
    assert server.connections_of(target_name_for("vd1"))[0].outstanding_tasks == 1


async def test_drop_reset_versus_blackhole(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    reset = await _ready(server)
    server.faults.add(Fault(FaultKind.DROP_CONNECTION, mode=DropMode.RESET, count=1))
    await reset.send(reset.command(read10(0, 1), read_length=512))
    with trio.fail_after(5):
        try:
            while True:
                await reset.receive(5)
        except (EOFError, trio.BrokenResourceError) as error:
            cause = error.__cause__ or error
    assert "reset" in repr(cause).lower() or isinstance(cause, trio.BrokenResourceError)

    dark = await _ready(server)
    server.faults.add(Fault(FaultKind.DROP_CONNECTION, mode=DropMode.BLACKHOLE, count=1))
    await dark.send(dark.command(read10(0, 1), read_length=512))
    assert await dark.receive_or_none(2.0) is None  # no answer, no close
    assert len(server.connections_of(target_name_for("vd1"))) == 1  # the socket stays open
    await dark.close()
    with trio.fail_after(5):
        while server.connections_of(target_name_for("vd1")):
            await trio.sleep(0.05)


async def test_stat_sn_jump_reject_and_swallowed_nop(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server)
    before = await initiator.scsi(read10(0, 1), read_length=512)
    assert before.status == GOOD
    last_stat_sn = initiator.exp_stat_sn
    server.faults.add(Fault(FaultKind.STAT_SN_JUMP, amount=5, count=1))
    await initiator.send(initiator.command(read10(0, 1), read_length=512))
    pdu = await initiator.receive()
    assert isinstance(pdu, DataIn | ScsiResponse)
    assert pdu.stat_sn == (last_stat_sn + 5) & 0xFFFFFFFF

    server.faults.add(Fault(FaultKind.SWALLOW_NOP_OUT, count=1))
    ping = NopOut(immediate=True, itt=initiator.next_itt(), ttt=RESERVED_TAG,
                  cmd_sn=initiator.cmd_sn, exp_stat_sn=initiator.exp_stat_sn)  # fmt: skip
    await initiator.send(ping)
    assert await initiator.receive_or_none(1.0) is None

    server.faults.add(Fault(FaultKind.REJECT, reason=0x09, pdu_opcodes=(0x01,), count=1))
    await initiator.send(initiator.command(read10(0, 1), read_length=512))
    reject = await initiator.receive()
    assert isinstance(reject, Reject) and reject.reason == 0x09
    after = await initiator.scsi(read10(0, 1), read_length=512)  # the CmdSN window moved on
    assert after.status == GOOD


async def test_login_fault_refuses_then_lets_in(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    server.faults.add(Fault(FaultKind.LOGIN_FAIL, vdisk="vd1", status=0x0301, count=1))
    assert server.port is not None
    first = await TestInitiator.connect(server.port)
    outcome = await first.login(target_name_for("vd1"))
    assert isinstance(outcome, LoginFailed) and int(outcome.status) == 0x0301
    await first.close()
    second = await _ready(server)  # count=1: the next login goes through
    assert (await second.scsi(read10(0, 1), read_length=512)).status == GOOD


async def test_unit_attention_on_demand(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server)
    server.faults.add(Fault.from_dict({"kind": "unit_attention", "vdisk": "vd1",
                                       "asc": "capacity_changed"}))  # fmt: skip
    with trio.fail_after(5):
        while server.faults.armed:
            await trio.sleep(0.02)
    result = await initiator.scsi(read10(0, 1), read_length=512)
    assert result.status == CHECK_CONDITION
    assert result.sense[2] & 0x0F == 0x06 and result.sense[12:14] == b"\x2a\x09"
