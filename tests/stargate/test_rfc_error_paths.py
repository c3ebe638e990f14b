"""RFC 7143 error paths against an in-process stargate on loopback, PDU by PDU: a Data-Out
that fails its data digest (7.8), commands that arrive after a CmdSN gap (3.2.2.1), text
cut short of its terminating NUL (6.1)."""

from __future__ import annotations

import struct

import trio

from iscsicore.framing import encode_pdu
from iscsicore.pdu import (
    R2T,
    RESERVED_TAG,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    LoginStage,
    NopIn,
    NopOut,
    Reject,
    RejectReason,
    ScsiResponse,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TmfFunction,
    TmfResponse,
)
from iscsicore.scsi.opcodes import ScsiStatus
from iscsicore.scsi.sense import parse_sense
from stargate.server import StargateServer
from tests.stargate.client import (
    INITIATOR,
    TEST_UNIT_READY,
    TestInitiator,
    clear_unit_attention,
    logged_in,
    proposals,
    read10,
    start_stargate,
    write10,
)
from topology.naming import target_name_for

BLOCK = 512
QUIET = 0.3  # seconds in which a held command must stay unanswered


async def _write_with_bad_digest(
    initiator: TestInitiator,
    itt: int,
    ttt: int,
    payload: bytes,
    *,
    corrupt: int,
    segment: int,
    start: int = 0,
) -> None:
    """Send ``payload[start:]`` as one Data-Out sequence of ``segment``-byte PDUs; the one
    at index ``corrupt`` has its data digest flipped."""
    end = len(payload)
    for index, offset in enumerate(range(start, end, segment)):
        length = min(segment, end - offset)
        pdu = DataOut(
            final=offset + length >= end,
            itt=itt,
            ttt=ttt,
            exp_stat_sn=initiator.exp_stat_sn,
            data_sn=index,
            buffer_offset=offset,
            data=payload[offset : offset + length],
        )
        wire = bytearray(encode_pdu(pdu, data_digest=True))
        if index == corrupt:
            wire[-1] ^= 0xFF
        await initiator.stream.send_all(bytes(wire))


def _crc_error(response: ScsiResponse) -> tuple[int, int, int]:
    (length,) = struct.unpack_from(">H", response.data)
    sense = parse_sense(bytes(response.data[2 : 2 + length]))
    return int(sense.key), sense.asc, sense.ascq


async def _read_block(initiator: TestInitiator, lba: int) -> bytes:
    """READ(10) of one block as an immediate command (delivered whatever the CmdSN gap)."""
    command = initiator.command(read10(lba, 1), read_length=BLOCK, immediate=True)
    await initiator.send(command)
    result = await initiator.collect(command.itt)
    assert result.status == ScsiStatus.GOOD
    return bytes(result.data)


async def _digest_session(server: StargateServer) -> TestInitiator:
    initiator = await logged_in(
        server,
        proposals=proposals(data_digest=("CRC32C",), initial_r2t=True, immediate_data=False),
    )
    assert initiator.data_digest
    await clear_unit_attention(initiator)
    return initiator


async def test_a_data_out_with_a_bad_data_digest_ends_its_task(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _digest_session(server)
    payload = bytes([0x5A]) * (2 * BLOCK)
    command = initiator.command(write10(40, 2), write_data=payload)
    await initiator.send(command)
    r2t = await initiator.receive()
    assert isinstance(r2t, R2T)
    assert r2t.desired_data_transfer_length == len(payload)
    await _write_with_bad_digest(initiator, r2t.itt, r2t.ttt, payload, corrupt=0, segment=2 * BLOCK)
    reject = await initiator.receive(timeout=1.0)
    assert isinstance(reject, Reject) and reject.reason == RejectReason.DATA_DIGEST_ERROR
    response = await initiator.receive(timeout=1.0)
    assert isinstance(response, ScsiResponse) and response.itt == command.itt
    assert response.status == ScsiStatus.CHECK_CONDITION
    assert _crc_error(response) == (0x0B, 0x47, 0x05)  # ABORTED COMMAND, PROTOCOL SERVICE CRC
    # Its queue slot and write buffer are free again.
    assert (server.queue.in_flight, server.queue.buffered_bytes) == (0, 0)
    # Nothing was written, and the session goes on.
    assert await _read_block(initiator, 40) == bytes(BLOCK)
    result = await initiator.scsi(write10(40, 2), write_data=payload)
    assert result.status == ScsiStatus.GOOD
    assert await _read_block(initiator, 41) == payload[:BLOCK]
    assert [c.outstanding_tasks for c in server.all_connections()] == [0]


async def test_after_a_bad_data_digest_the_status_waits_for_the_end_of_the_sequence(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    initiator = await _digest_session(server)
    payload = bytes(range(256)) * 12  # 6 blocks, sent as 3 Data-Outs
    command = initiator.command(write10(60, 6), write_data=payload)
    await initiator.send(command)
    r2t = await initiator.receive()
    assert isinstance(r2t, R2T)
    # Only the first (bad) Data-Out: a Reject, but no status while the sequence is open.
    wire = bytearray(
        encode_pdu(
            DataOut(
                itt=r2t.itt,
                ttt=r2t.ttt,
                exp_stat_sn=initiator.exp_stat_sn,
                data_sn=0,
                buffer_offset=0,
                data=payload[: 2 * BLOCK],
            ),
            data_digest=True,
        )
    )
    wire[-1] ^= 0xFF
    await initiator.stream.send_all(bytes(wire))
    reject = await initiator.receive(timeout=1.0)
    assert isinstance(reject, Reject) and reject.reason == RejectReason.DATA_DIGEST_ERROR
    assert await initiator.receive_or_none(QUIET) is None
    # The rest of the sequence (good digests, DataSN and offsets as the initiator sent
    # them): discarded, then the status.
    for index, offset in ((1, 2 * BLOCK), (2, 4 * BLOCK)):
        await initiator.send(
            DataOut(
                final=index == 2,
                itt=r2t.itt,
                ttt=r2t.ttt,
                exp_stat_sn=initiator.exp_stat_sn,
                data_sn=index,
                buffer_offset=offset,
                data=payload[offset : offset + 2 * BLOCK],
            )
        )
    response = await initiator.receive(timeout=1.0)
    assert isinstance(response, ScsiResponse) and response.itt == command.itt
    assert _crc_error(response) == (0x0B, 0x47, 0x05)
    assert await _read_block(initiator, 62) == bytes(BLOCK)  # nothing of it written
    assert (await initiator.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD


async def test_a_bad_data_digest_in_unsolicited_data_ends_its_task(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(
        server,
        proposals=proposals(data_digest=("CRC32C",), initial_r2t=False, immediate_data=False),
    )
    await clear_unit_attention(initiator)
    payload = bytes([0x3C]) * (2 * BLOCK)
    command = initiator.command(write10(50, 2), write_data=payload, final=False)
    await initiator.send(command)
    await _write_with_bad_digest(
        initiator, command.itt, RESERVED_TAG, payload, corrupt=0, segment=BLOCK
    )
    reject = await initiator.receive(timeout=1.0)
    assert isinstance(reject, Reject) and reject.reason == RejectReason.DATA_DIGEST_ERROR
    response = await initiator.receive(timeout=1.0)
    assert isinstance(response, ScsiResponse) and response.itt == command.itt
    assert _crc_error(response) == (0x0B, 0x47, 0x05)
    assert (server.queue.in_flight, server.queue.buffered_bytes) == (0, 0)
    assert (await initiator.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD


async def _statuses(initiator: TestInitiator, count: int) -> list[int]:
    """ITTs of the next ``count`` statuses, in the order they came."""
    itts: list[int] = []
    for _ in range(count):
        pdu = await initiator.receive(timeout=2.0)
        assert isinstance(pdu, ScsiResponse), pdu
        assert pdu.status == ScsiStatus.GOOD
        itts.append(pdu.itt)
    return itts


async def test_commands_after_a_cmd_sn_gap_wait_for_it_then_run_in_order(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    base = initiator.cmd_sn
    writes = [
        initiator.command(write10(7, 1), write_data=bytes([n]) * BLOCK, cmd_sn=base + n)
        for n in range(3)
    ]
    for command in writes:
        command.data = bytes([writes.index(command) + 1]) * BLOCK  # immediate data: all of it
    await initiator.send(writes[2])
    assert await initiator.receive_or_none(QUIET) is None, "ran before the gap was filled"
    assert await _read_block(initiator, 7) == bytes(BLOCK)  # and did not write
    await initiator.send(writes[0])
    assert await _statuses(initiator, 1) == [writes[0].itt]
    assert await initiator.receive_or_none(QUIET) is None, "ran with CmdSN base+1 missing"
    await initiator.send(writes[1])
    assert await _statuses(initiator, 2) == [writes[1].itt, writes[2].itt]
    assert await _read_block(initiator, 7) == bytes([3]) * BLOCK  # the last one wrote last
    initiator.cmd_sn = base + 3
    assert (await initiator.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD


async def test_a_held_write_keeps_its_unsolicited_data_for_its_turn(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(
        server, proposals=proposals(initial_r2t=False, immediate_data=False)
    )
    await clear_unit_attention(initiator)
    base = initiator.cmd_sn
    payload = bytes(range(256)) * 4  # 2 blocks of unsolicited Data-Out
    held = initiator.command(write10(13, 2), write_data=payload, final=False, cmd_sn=base + 1)
    await initiator.send(held)
    await initiator.send_data_out(held.itt, RESERVED_TAG, payload, 0, len(payload))
    assert await initiator.receive_or_none(QUIET) is None
    gap = initiator.command(TEST_UNIT_READY, cmd_sn=base)
    await initiator.send(gap)
    assert await _statuses(initiator, 2) == [gap.itt, held.itt]
    assert await _read_block(initiator, 14) == payload[BLOCK:]


async def test_a_held_write_whose_unsolicited_data_failed_its_digest_fails_in_its_turn(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(
        server,
        proposals=proposals(data_digest=("CRC32C",), initial_r2t=False, immediate_data=False),
    )
    await clear_unit_attention(initiator)
    base = initiator.cmd_sn
    payload = bytes([0x42]) * (2 * BLOCK)
    held = initiator.command(write10(15, 2), write_data=payload, final=False, cmd_sn=base + 1)
    await initiator.send(held)
    await _write_with_bad_digest(
        initiator, held.itt, RESERVED_TAG, payload, corrupt=1, segment=BLOCK
    )
    reject = await initiator.receive(timeout=1.0)
    assert isinstance(reject, Reject) and reject.reason == RejectReason.DATA_DIGEST_ERROR
    assert await initiator.receive_or_none(QUIET) is None
    await initiator.send(initiator.command(TEST_UNIT_READY, cmd_sn=base))
    assert isinstance(await initiator.receive(), ScsiResponse)  # the TUR
    response = await initiator.receive(timeout=1.0)
    assert isinstance(response, ScsiResponse) and response.itt == held.itt
    assert _crc_error(response) == (0x0B, 0x47, 0x05)
    assert await _read_block(initiator, 15) == bytes(BLOCK)


async def test_a_gap_never_filled_holds_its_command_but_not_immediate_ones(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    held = initiator.command(write10(9, 1), write_data=b"\xee" * BLOCK, cmd_sn=initiator.cmd_sn + 1)
    held.data = b"\xee" * BLOCK
    await initiator.send(held)
    for _ in range(3):  # immediate commands and pings go on
        assert await _read_block(initiator, 9) == bytes(BLOCK)
    ping = NopOut(immediate=True, itt=900, cmd_sn=initiator.cmd_sn, data=b"still-there")
    await initiator.send(ping)
    answer = await initiator.receive()
    assert isinstance(answer, NopIn) and answer.itt == 900
    assert answer.exp_cmd_sn == initiator.cmd_sn  # ExpCmdSN did not jump the gap
    assert await initiator.receive_or_none(QUIET) is None  # the held write never ran


async def test_abort_task_of_a_lost_command_releases_those_held_behind_it(
    nursery: trio.Nursery,
) -> None:
    """Linux at ErrorRecoveryLevel 0 aborts a command it never got an answer for: that
    fills its CmdSN gap (RFC 7143 11.5.1), and the commands behind it run."""
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    lost = initiator.command(TEST_UNIT_READY)  # never sent
    after = initiator.command(TEST_UNIT_READY)
    await initiator.send(after)
    assert await initiator.receive_or_none(QUIET) is None
    await initiator.send(
        TaskMgmtRequest(
            immediate=True,
            function=TmfFunction.ABORT_TASK,
            itt=901,
            referenced_task_tag=lost.itt,
            cmd_sn=initiator.cmd_sn,
            ref_cmd_sn=lost.cmd_sn,
        )
    )
    first = await initiator.receive()
    assert isinstance(first, TaskMgmtResponse) and first.response == TmfResponse.COMPLETE
    second = await initiator.receive()
    assert isinstance(second, ScsiResponse | DataIn) and second.itt == after.itt


async def test_a_logical_unit_reset_ends_the_commands_held_behind_a_gap(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    initiator.command(TEST_UNIT_READY)  # lost on the way: never sent
    held = initiator.command(write10(11, 1), write_data=b"\x77" * BLOCK)
    held.data = b"\x77" * BLOCK
    await initiator.send(held)
    await initiator.send(
        TaskMgmtRequest(
            immediate=True,
            function=TmfFunction.LOGICAL_UNIT_RESET,
            itt=903,
            cmd_sn=initiator.cmd_sn,
        )
    )
    answer = await initiator.receive()
    assert isinstance(answer, TaskMgmtResponse) and answer.response == TmfResponse.COMPLETE
    assert answer.exp_cmd_sn == initiator.cmd_sn  # the gap and the held write are gone
    assert await initiator.receive_or_none(QUIET) is None  # the held write never answered
    await clear_unit_attention(initiator)  # the reset's unit attention, then GOOD
    assert await _read_block(initiator, 11) == bytes(BLOCK)  # and never ran


async def _login_with_text(server: StargateServer, text: bytes) -> LoginResponse:
    assert server.port is not None
    initiator = await TestInitiator.connect(server.port)
    request = LoginRequest(
        transit=True,
        csg=LoginStage.SECURITY,
        nsg=LoginStage.OPERATIONAL,
        isid=0x400000ABCDEF,
        itt=1,
        cmd_sn=1,
        data=text,
    )
    await initiator.send(request)
    response = await initiator.receive()
    await initiator.close()
    assert isinstance(response, LoginResponse)
    return response


async def test_login_text_without_its_terminating_nul_is_refused(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    pairs = (
        f"InitiatorName={INITIATOR}\0SessionType=Normal\0"
        f"TargetName={target_name_for('vd1')}\0AuthMethod=None"
    ).encode()
    response = await _login_with_text(server, pairs)  # the last pair has no NUL
    assert (response.status_class, response.status_detail) == (0x02, 0x00)  # initiator error
    good = await _login_with_text(server, pairs + b"\0")
    assert good.status_class == 0


async def test_a_text_request_without_its_terminating_nul_is_rejected(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    request = TextRequest(
        final=True,
        itt=902,
        ttt=0xFFFFFFFF,
        cmd_sn=initiator.cmd_sn,
        exp_stat_sn=initiator.exp_stat_sn,
        data=b"SendTargets=All",
    )
    await initiator.send(request)
    reject = await initiator.receive()
    assert isinstance(reject, Reject) and reject.reason == RejectReason.PROTOCOL_ERROR
    initiator.cmd_sn += 1  # it used its CmdSN
    await clear_unit_attention(initiator)  # the session goes on
