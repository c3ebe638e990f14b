"""The full-feature phase, driven PDU by PDU against an in-process stargate on loopback."""

from __future__ import annotations

import os
import struct

import pytest
import trio

from iscsicore.framing import encode_pdu
from iscsicore.pdu import (
    R2T,
    RESERVED_TAG,
    AsyncEvent,
    AsyncMessage,
    DataIn,
    LogoutReason,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Reject,
    RejectReason,
    ScsiResponse,
    SnackRequest,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TmfFunction,
    TmfResponse,
)
from iscsicore.scsi.opcodes import ScsiStatus
from iscsicore.scsi.sense import parse_sense
from stargate.transport.config import ConnectionTimers
from tests.stargate.client import (
    INQUIRY,
    TEST_UNIT_READY,
    clear_unit_attention,
    logged_in,
    memory_target,
    proposals,
    read10,
    start_stargate,
    write10,
)

MiB = 1 << 20
FAST_PINGS = ConnectionTimers(nop_interval=0.2, nop_timeout=0.4)


async def test_inquiry_data_in_carries_status(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    result = await initiator.scsi(INQUIRY, read_length=96)
    assert result.status == ScsiStatus.GOOD
    assert result.collapsed, "status should ride on the last Data-In (phase collapse)"
    assert result.data[0] & 0x1F == 0  # direct-access block device
    assert len(result.data) + result.residual == 96


async def test_write_read_back_with_immediate_unsolicited_and_r2t(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    # InitialR2T=No + ImmediateData: immediate data, an unsolicited burst, then R2Ts.
    initiator = await logged_in(
        server,
        proposals=proposals(
            initial_r2t=False,
            first_burst_length=16384,
            max_burst_length=32768,
            max_outstanding_r2t=4,
        ),
    )
    await clear_unit_attention(initiator)
    payload = os.urandom(200 * 512)
    write = await initiator.scsi(write10(10, 200), write_data=payload)
    assert write.status == ScsiStatus.GOOD
    assert write.r2ts, "a 100 KiB write past a 16 KiB first burst needs R2Ts"
    assert all(r2t.desired_data_transfer_length <= 32768 for r2t in write.r2ts)
    assert write.r2ts[0].buffer_offset == 16384
    read = await initiator.scsi(read10(10, 200), read_length=len(payload))
    assert read.status == ScsiStatus.GOOD
    assert bytes(read.data) == payload


async def test_write_with_initial_r2t_and_no_immediate_data(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(
        server, proposals=proposals(initial_r2t=True, immediate_data=False, max_burst_length=8192)
    )
    await clear_unit_attention(initiator)
    payload = os.urandom(64 * 512)
    write = await initiator.scsi(write10(0, 64), write_data=payload)
    assert write.status == ScsiStatus.GOOD
    assert [r2t.buffer_offset for r2t in write.r2ts] == list(range(0, len(payload), 8192))
    assert [r2t.r2t_sn for r2t in write.r2ts] == list(range(len(write.r2ts)))
    read = await initiator.scsi(read10(0, 64), read_length=len(payload))
    assert bytes(read.data) == payload


async def test_data_in_split_by_initiator_segment_length(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server, proposals=proposals(max_recv_data_segment_length=4096))
    await clear_unit_attention(initiator)
    result = await initiator.scsi(read10(0, 64), read_length=64 * 512)
    data_ins = [pdu for pdu in result.pdus if isinstance(pdu, DataIn)]
    assert len(data_ins) == 8
    assert all(len(pdu.data) <= 4096 for pdu in data_ins)
    assert [pdu.data_sn for pdu in data_ins] == list(range(8))
    assert data_ins[-1].status_present and data_ins[-1].final
    assert not any(pdu.status_present for pdu in data_ins[:-1])


async def test_invalid_data_sn_is_rejected_and_the_command_fails(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server, proposals=proposals(initial_r2t=True, immediate_data=False))
    await clear_unit_attention(initiator)
    payload = bytes([0xA6]) * 1024
    command = initiator.command(write10(100, 2), write_data=payload)
    await initiator.send(command)
    r2t = await initiator.receive()
    assert isinstance(r2t, R2T)
    initiator.target_mrdsl = 512  # two Data-Outs, both claiming DataSN 0
    await initiator.send_data_out(
        command.itt,
        r2t.ttt,
        payload,
        0,
        1024,
        data_sn_of=lambda index: 0,
    )
    seen = [await initiator.receive(), await initiator.receive()]
    reject = next(pdu for pdu in seen if isinstance(pdu, Reject))
    assert reject.reason == RejectReason.PROTOCOL_ERROR
    response = next(pdu for pdu in seen if isinstance(pdu, ScsiResponse))
    assert response.status == ScsiStatus.CHECK_CONDITION
    # The connection and session still work.
    assert (await initiator.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD


async def test_read_residuals(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    short = await initiator.scsi(read10(0, 2), read_length=512)
    assert (short.status, short.overflow, short.residual) == (ScsiStatus.GOOD, True, 512)
    assert len(short.data) == 512
    long = await initiator.scsi(read10(0, 1), read_length=10000)
    assert (long.status, long.underflow, long.residual) == (ScsiStatus.GOOD, True, 10000 - 512)
    assert len(long.data) == 512


async def test_exact_writes_report_no_residual(nursery: trio.Nursery) -> None:
    # Linux's SCSI layer retries a write whose response claims an underflow, forever.
    server = await start_stargate(nursery)
    initiator = await logged_in(server, proposals=proposals(initial_r2t=False))
    await clear_unit_attention(initiator)
    for blocks in (1, 8, 300):
        write = await initiator.scsi(write10(0, blocks), write_data=os.urandom(blocks * 512))
        assert (write.status, write.underflow, write.overflow, write.residual) == (
            ScsiStatus.GOOD,
            False,
            False,
            0,
        )


async def test_write_residuals_write_only_what_both_allow(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    await initiator.scsi(write10(0, 2), write_data=b"a" * 1024)
    # CDB says 2 blocks, EDTL one block: only one block is written, overflow 512.
    over = await initiator.scsi(write10(0, 2), write_data=b"b" * 512)
    assert (over.status, over.overflow, over.residual) == (ScsiStatus.GOOD, True, 512)
    # CDB says 1 block, EDTL 3 blocks: one block written, underflow 1024.
    under = await initiator.scsi(write10(1, 1), write_data=b"c" * 1536)
    assert (under.status, under.underflow, under.residual) == (ScsiStatus.GOOD, True, 1024)
    read = await initiator.scsi(read10(0, 3), read_length=1536)
    assert bytes(read.data) == b"b" * 512 + b"c" * 512 + bytes(512)


async def test_commands_outside_the_cmd_sn_window_are_ignored(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    too_high = initiator.command(TEST_UNIT_READY, cmd_sn=(initiator.max_cmd_sn + 5) & 0xFFFFFFFF)
    too_low = initiator.command(TEST_UNIT_READY, cmd_sn=(initiator.cmd_sn - 3) & 0xFFFFFFFF)
    await initiator.send(too_high)
    await initiator.send(too_low)
    assert await initiator.receive_or_none(0.5) is None
    assert (await initiator.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD


async def test_nop_out_is_echoed(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    ping = NopOut(immediate=True, itt=77, cmd_sn=initiator.cmd_sn, data=b"hello-ping")
    await initiator.send(ping)
    answer = await initiator.receive()
    assert isinstance(answer, NopIn)
    assert (answer.itt, answer.ttt, bytes(answer.data)) == (77, RESERVED_TAG, b"hello-ping")


async def test_target_pings_and_drops_a_silent_initiator(nursery: trio.Nursery) -> None:
    server = await start_stargate(
        nursery, timers=ConnectionTimers(nop_interval=0.2, nop_timeout=0.4)
    )
    initiator = await logged_in(server)
    ping = await initiator.receive(timeout=2)
    assert isinstance(ping, NopIn) and ping.ttt != RESERVED_TAG and ping.itt == RESERVED_TAG
    assert await initiator.closed_by_target(timeout=3)


async def test_answered_pings_keep_the_connection(nursery: trio.Nursery) -> None:
    server = await start_stargate(
        nursery, timers=ConnectionTimers(nop_interval=0.2, nop_timeout=0.4)
    )
    initiator = await logged_in(server)
    for _ in range(4):
        ping = await initiator.receive(timeout=2)
        assert isinstance(ping, NopIn)
        await initiator.send(
            NopOut(immediate=True, itt=RESERVED_TAG, ttt=ping.ttt, cmd_sn=initiator.cmd_sn)
        )
    assert (await initiator.scsi(TEST_UNIT_READY)).status is not None


async def test_logout_closes_the_session(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await initiator.send(
        LogoutRequest(
            immediate=True, reason=LogoutReason.CLOSE_SESSION, itt=9, cmd_sn=initiator.cmd_sn
        )
    )
    response = await initiator.receive()
    assert isinstance(response, LogoutResponse) and response.response == 0 and response.itt == 9
    assert await initiator.closed_by_target()
    with trio.fail_after(2):
        while len(server.sessions):
            await trio.sleep(0.01)


async def test_snack_is_rejected_at_error_recovery_level_0(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await initiator.send(SnackRequest(itt=5))
    reject = await initiator.receive()
    assert isinstance(reject, Reject)
    assert len(reject.data) == 48 and reject.data[0] & 0x3F == 0x10


async def test_garbage_drops_only_that_connection(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    healthy = await logged_in(server, "vd1")
    vandal = await logged_in(server, "vd2")
    # A reserved opcode with a huge data segment length: cannot be framed, must be dropped.
    await vandal.stream.send_all(bytes([0x1C, 0x80]) + b"\xff" * 46 + os.urandom(200))
    assert await vandal.closed_by_target()
    await clear_unit_attention(healthy)
    assert (await healthy.scsi(read10(0, 8), read_length=4096)).status == ScsiStatus.GOOD


async def test_abort_task_of_a_write_waiting_for_data(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server, proposals=proposals(initial_r2t=True, immediate_data=False))
    await clear_unit_attention(initiator)
    command = initiator.command(write10(0, 8), write_data=bytes(4096))
    await initiator.send(command)
    r2t = await initiator.receive()
    assert r2t.__class__.__name__ == "R2T"
    await initiator.send(
        TaskMgmtRequest(
            function=TmfFunction.ABORT_TASK,
            itt=1000,
            referenced_task_tag=command.itt,
            cmd_sn=initiator.cmd_sn,
            ref_cmd_sn=command.cmd_sn,
        )
    )
    response = await initiator.receive()
    assert isinstance(response, TaskMgmtResponse)
    assert response.response == TmfResponse.COMPLETE
    assert server.queue.in_flight == 0
    assert (await initiator.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD


async def test_lun_reset_gives_other_sessions_a_unit_attention(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    first = await logged_in(server)
    second = await logged_in(server)
    await clear_unit_attention(first)
    await clear_unit_attention(second)
    await first.send(
        TaskMgmtRequest(function=TmfFunction.LOGICAL_UNIT_RESET, itt=2000, cmd_sn=first.cmd_sn)
    )
    response = await first.receive()
    assert isinstance(response, TaskMgmtResponse) and response.response == TmfResponse.COMPLETE
    after = await second.scsi(TEST_UNIT_READY)
    assert after.status == ScsiStatus.CHECK_CONDITION
    assert parse_sense(after.sense).key == 0x6


async def test_async_logout_request_and_drop(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    asked = await logged_in(server, "vd1")
    bystander = await logged_in(server, "vd2")
    await clear_unit_attention(asked)  # the server has registered the session by now
    assert server.request_logout("vd1", seconds=7) == 1
    message = await asked.receive()
    assert isinstance(message, AsyncMessage)
    assert (message.async_event, message.parameter3) == (AsyncEvent.LOGOUT_REQUEST, 7)
    assert server.drop_connections("vd1", time2wait=3) == 1
    dropped = await asked.receive()
    assert isinstance(dropped, AsyncMessage)
    assert dropped.async_event == AsyncEvent.DROP_ALL_CONNECTIONS and dropped.parameter2 == 3
    assert await asked.closed_by_target()
    await clear_unit_attention(bystander)
    assert server.stats()["vd2"]["sessions"] == 1


async def test_header_and_data_digests(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(
        server, proposals=proposals(header_digest=("CRC32C",), data_digest=("CRC32C",))
    )
    assert initiator.header_digest and initiator.data_digest
    await clear_unit_attention(initiator)
    payload = os.urandom(8192)
    assert (await initiator.scsi(write10(0, 16), write_data=payload)).status == ScsiStatus.GOOD
    assert bytes((await initiator.scsi(read10(0, 16), read_length=8192)).data) == payload


async def test_a_header_digest_error_drops_the_connection(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server, proposals=proposals(header_digest=("CRC32C",)))
    initiator.header_digest = False  # send the next PDU without its digest: a bad one
    await initiator.send(initiator.command(TEST_UNIT_READY))
    await initiator.stream.send_all(b"\x00" * 52)
    assert await initiator.closed_by_target()


async def test_unknown_lun(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    command = initiator.command(TEST_UNIT_READY, lun=5 << 48)
    await initiator.send(command)
    result = await initiator.collect(command.itt)
    assert result.status == ScsiStatus.CHECK_CONDITION
    assert struct.unpack_from(">BB", parse_sense_bytes(result.sense)) == (0x25, 0x00)


def parse_sense_bytes(sense: bytes) -> bytes:
    data = parse_sense(sense)
    return bytes([data.asc, data.ascq])


async def test_stats_count_io(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery, memory_target("vd1"))
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    await initiator.scsi(write10(0, 8), write_data=bytes(4096))
    await initiator.scsi(read10(0, 8), read_length=4096)
    stats = server.stats()["vd1"]
    assert stats["writes"] == 1 and stats["bytes_written"] == 4096
    assert stats["reads"] == 1 and stats["bytes_read"] == 4096
    assert stats["queue_depth"] == 0 and stats["connections"] == 1


async def test_clear_task_set_ends_another_sessions_waiting_write(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    victim = await logged_in(server, proposals=proposals(initial_r2t=True, immediate_data=False))
    clearer = await logged_in(server)
    await clear_unit_attention(victim)
    await clear_unit_attention(clearer)
    write = victim.command(write10(0, 8), write_data=bytes(4096))
    await victim.send(write)
    assert isinstance(await victim.receive(), R2T)
    await clearer.send(
        TaskMgmtRequest(function=TmfFunction.CLEAR_TASK_SET, itt=3000, cmd_sn=clearer.cmd_sn)
    )
    response = await clearer.receive()
    assert isinstance(response, TaskMgmtResponse) and response.response == TmfResponse.COMPLETE
    assert server.queue.in_flight == 0
    # TAS=0: the victim's write ends without a status; it learns from a unit attention.
    after = await victim.scsi(TEST_UNIT_READY)
    assert after.status == ScsiStatus.CHECK_CONDITION
    assert [pdu for pdu in after.pdus if getattr(pdu, "itt", None) == write.itt] == []
    assert parse_sense_bytes(after.sense) == bytes([0x2F, 0x00])


async def test_target_cold_reset_closes_every_connection_of_the_target(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    first = await logged_in(server, "vd1")
    second = await logged_in(server, "vd1")
    other_vdisk = await logged_in(server, "vd2")
    await first.send(
        TaskMgmtRequest(function=TmfFunction.TARGET_COLD_RESET, itt=4000, cmd_sn=first.cmd_sn)
    )
    response = await first.receive()
    assert isinstance(response, TaskMgmtResponse) and response.response == TmfResponse.COMPLETE
    assert await first.closed_by_target()
    assert await second.closed_by_target()
    await clear_unit_attention(other_vdisk)  # another vDisk is another target: untouched


async def test_an_initiator_that_stops_reading_holds_bounded_output(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery, memory_target("vd1", 64 << 20))
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    blocks = 2048  # 1 MiB each
    commands = [
        initiator.command(read10(i * blocks, blocks), read_length=blocks * 512) for i in range(40)
    ]
    # All in one segment: the target sees them in a single wake-up.
    await initiator.stream.send_all(b"".join(encode_pdu(command) for command in commands))
    await trio.sleep(0.5)
    (connection,) = server._connections
    assert connection.buffered_output <= 4 * MiB + blocks * 512 + 4096  # high water + one
    for command in commands:
        result = await initiator.collect(command.itt)
        assert result.status == ScsiStatus.GOOD and len(result.data) == blocks * 512


async def test_a_data_digest_error_is_rejected_and_the_connection_goes_on(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server, proposals=proposals(data_digest=("CRC32C",)))
    assert initiator.data_digest
    wire = bytearray(
        encode_pdu(
            NopOut(immediate=True, itt=11, cmd_sn=initiator.cmd_sn, data=b"ping-data"),
            data_digest=True,
        )
    )
    wire[-1] ^= 0xFF  # corrupt the data digest
    await initiator.stream.send_all(bytes(wire))
    reject = await initiator.receive()
    assert isinstance(reject, Reject) and reject.reason == RejectReason.DATA_DIGEST_ERROR
    await initiator.send(NopOut(immediate=True, itt=12, cmd_sn=initiator.cmd_sn, data=b"ok"))
    answer = await initiator.receive()
    assert isinstance(answer, NopIn) and answer.itt == 12 and bytes(answer.data) == b"ok"


async def test_an_initiator_ignoring_a_logout_request_is_dropped(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery, timers=ConnectionTimers(nop_interval=0.2))
    stubborn = await logged_in(server)
    await clear_unit_attention(stubborn)  # the server has registered the session by now
    assert server.request_logout("vd1", seconds=1) == 1
    message = await stubborn.receive()
    assert isinstance(message, AsyncMessage) and message.async_event == AsyncEvent.LOGOUT_REQUEST
    started = trio.current_time()
    while True:  # answer pings (alive), but never log out
        try:
            pdu = await stubborn.receive(timeout=5)
        except (EOFError, trio.BrokenResourceError):
            break
        if isinstance(pdu, NopIn) and pdu.ttt != RESERVED_TAG:
            await stubborn.send(
                NopOut(immediate=True, itt=RESERVED_TAG, ttt=pdu.ttt, cmd_sn=stubborn.cmd_sn)
            )
    assert 0.9 <= trio.current_time() - started < 3


async def test_shutdown_drops_every_session_and_stops_serving(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    clients = [await logged_in(server, "vd1"), await logged_in(server, "vd2")]
    with trio.fail_after(5):
        await server.shutdown(grace=2)
    for client in clients:
        message = await client.receive()
        assert isinstance(message, AsyncMessage)
        assert message.async_event == AsyncEvent.DROP_ALL_CONNECTIONS
        assert await client.closed_by_target()
    assert server.port is not None
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", server.port)


async def test_compare_and_write_whose_data_disagrees_with_the_cdb_is_refused(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    compare_and_write = bytes([0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0])
    result = await initiator.scsi(compare_and_write, write_data=bytes(3 * 512))
    assert result.status == ScsiStatus.CHECK_CONDITION
    assert parse_sense_bytes(result.sense) == bytes([0x24, 0x00])
    matching = await initiator.scsi(compare_and_write, write_data=bytes(2 * 512))
    assert matching.status == ScsiStatus.GOOD  # zeros compared equal to zeros


@pytest.mark.parametrize("eager_send_every", [0, 1, 3])
async def test_pipelined_reads_with_and_without_eager_sends(
    nursery: trio.Nursery, eager_send_every: int
) -> None:
    server = await start_stargate(nursery, eager_send_every=eager_send_every)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    payload = os.urandom(32 * 4096)
    assert (await initiator.scsi(write10(0, 256), write_data=payload)).status == ScsiStatus.GOOD
    commands = [initiator.command(read10(i * 8, 8), read_length=4096) for i in range(32)]
    await initiator.stream.send_all(b"".join(encode_pdu(command) for command in commands))
    for index, command in enumerate(commands):
        result = await initiator.collect(command.itt)
        assert result.status == ScsiStatus.GOOD
        assert bytes(result.data) == payload[index * 4096 : (index + 1) * 4096]
