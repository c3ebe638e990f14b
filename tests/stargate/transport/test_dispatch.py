"""`stargate.transport.dispatch`: the CmdSN rule, applied once before any handler, to
every PDU that carries a command, against the real server on loopback."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from iscsicore.pdu import (
    RESERVED_TAG,
    LogoutReason,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Pdu,
    Reject,
    RejectReason,
    ScsiResponse,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
    TmfFunction,
)
from iscsicore.scsi.opcodes import ScsiStatus
from stargate.server import StargateServer
from tests.stargate.client import (
    TEST_UNIT_READY,
    TestInitiator,
    clear_unit_attention,
    logged_in,
    start_stargate,
)

QUIET = 0.3  # seconds in which a held PDU must stay unanswered
ITT = 0x5150

# PDUs with a CmdSN, and the answer each gets once its turn comes.
ORDERED: dict[str, tuple[Callable[[int], Pdu], type[Pdu]]] = {
    "nop-out": (lambda cmd_sn: NopOut(itt=ITT, cmd_sn=cmd_sn, data=b"ping"), NopIn),
    "text": (
        lambda cmd_sn: TextRequest(itt=ITT, cmd_sn=cmd_sn, data=b"SendTargets=All\x00"),
        TextResponse,
    ),
    "task management": (
        lambda cmd_sn: TaskMgmtRequest(
            immediate=False, function=TmfFunction.ABORT_TASK_SET, itt=ITT, cmd_sn=cmd_sn
        ),
        TaskMgmtResponse,
    ),
    "logout": (
        lambda cmd_sn: LogoutRequest(reason=LogoutReason.CLOSE_SESSION, itt=ITT, cmd_sn=cmd_sn),
        LogoutResponse,
    ),
}


async def _vdisk_session(nursery: trio.Nursery) -> tuple[StargateServer, TestInitiator]:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    return server, initiator


@pytest.mark.parametrize("kind", ORDERED)
async def test_a_pdu_after_a_cmd_sn_gap_waits_for_it(kind: str, nursery: trio.Nursery) -> None:
    _, initiator = await _vdisk_session(nursery)
    build, answer_type = ORDERED[kind]
    gap = initiator.command(TEST_UNIT_READY)
    await initiator.send(build(initiator.cmd_sn))
    assert await initiator.receive_or_none(QUIET) is None, "answered before the gap filled"
    await initiator.send(gap)
    first = await initiator.receive()
    assert isinstance(first, ScsiResponse) and first.itt == gap.itt
    second = await initiator.receive()
    assert isinstance(second, answer_type)
    assert isinstance(second, NopIn | TextResponse | TaskMgmtResponse | LogoutResponse)
    assert second.itt == ITT
    assert second.exp_cmd_sn == initiator.cmd_sn + 1  # its CmdSN was counted


@pytest.mark.parametrize("kind", ORDERED)
async def test_a_pdu_outside_the_window_is_ignored_and_counted(
    kind: str, nursery: trio.Nursery
) -> None:
    server, initiator = await _vdisk_session(nursery)
    (connection,) = server.all_connections()
    build, _ = ORDERED[kind]
    before = connection.cmd_sn_out_of_window
    await initiator.send(build(initiator.max_cmd_sn + 1000))
    assert await initiator.receive_or_none(QUIET) is None
    assert connection.cmd_sn_out_of_window == before + 1
    # ExpCmdSN did not move: the next command in order runs.
    assert (await initiator.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD


async def test_an_immediate_pdu_goes_ahead_of_a_gap_without_using_a_cmd_sn(
    nursery: trio.Nursery,
) -> None:
    _, initiator = await _vdisk_session(nursery)
    held = initiator.command(TEST_UNIT_READY, cmd_sn=initiator.cmd_sn + 1)
    await initiator.send(held)
    await initiator.send(NopOut(immediate=True, itt=ITT, cmd_sn=initiator.cmd_sn))
    answer = await initiator.receive()
    assert isinstance(answer, NopIn) and answer.itt == ITT
    assert answer.exp_cmd_sn == initiator.cmd_sn
    assert await initiator.receive_or_none(QUIET) is None  # the held command still waits


async def test_the_answer_to_a_ping_uses_no_cmd_sn(nursery: trio.Nursery) -> None:
    """A NOP-Out with ITT 0xffffffff answers our NOP-In: never ordered, never answered,
    even when it (wrongly) is not marked immediate and carries the next CmdSN."""
    _, initiator = await _vdisk_session(nursery)
    await initiator.send(NopOut(itt=RESERVED_TAG, ttt=7, cmd_sn=initiator.cmd_sn))
    assert await initiator.receive_or_none(QUIET) is None
    # That CmdSN is still the next one: a command with it runs.
    assert (await initiator.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD


async def test_a_discovery_session_rejects_scsi_commands_without_using_their_cmd_sn(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    assert server.port is not None
    initiator = await TestInitiator.connect(server.port)
    await initiator.login(None)
    command = initiator.command(TEST_UNIT_READY)
    await initiator.send(command)
    reject = await initiator.receive()
    assert isinstance(reject, Reject) and reject.reason == RejectReason.PROTOCOL_ERROR
    await initiator.send(TextRequest(itt=ITT, cmd_sn=command.cmd_sn, data=b"SendTargets=All\x00"))
    answer = await initiator.receive()
    assert isinstance(answer, TextResponse) and answer.itt == ITT
    assert answer.exp_cmd_sn == command.cmd_sn + 1


async def test_cmd_sns_wrap_around_at_2_to_the_32(nursery: trio.Nursery) -> None:
    """RFC 7143 serial arithmetic: 0xFFFFFFFF is followed by 0, in order and held alike."""
    server = await start_stargate(nursery)
    initiator = await logged_in(server, cmd_sn=0xFFFFFFF8)
    await clear_unit_attention(initiator)
    for _ in range(8):  # the CmdSNs up to 0xFFFFFFFE, in order
        if initiator.cmd_sn == 0xFFFFFFFE:
            break
        assert (await initiator.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD
    assert initiator.cmd_sn == 0xFFFFFFFE
    before_wrap = initiator.command(TEST_UNIT_READY)  # 0xFFFFFFFE
    gap = initiator.command(TEST_UNIT_READY)  # 0xFFFFFFFF
    after_wrap = [initiator.command(TEST_UNIT_READY) for _ in range(2)]  # 0, 1
    assert [c.cmd_sn for c in (gap, *after_wrap)] == [0xFFFFFFFF, 0, 1]
    await initiator.send(before_wrap)
    for command in after_wrap:
        await initiator.send(command)
    answer = await initiator.receive()
    assert isinstance(answer, ScsiResponse) and answer.itt == before_wrap.itt
    assert answer.exp_cmd_sn == 0xFFFFFFFF
    assert await initiator.receive_or_none(QUIET) is None  # 0 and 1 wait for 0xFFFFFFFF
    await initiator.send(gap)
    answers = [await initiator.receive() for _ in range(3)]
    assert all(isinstance(pdu, ScsiResponse) for pdu in answers)
    assert [pdu.itt for pdu in answers if isinstance(pdu, ScsiResponse)] == [
        gap.itt,
        *(c.itt for c in after_wrap),
    ]
    assert (await initiator.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD  # CmdSN 2
