"""Behaviours tgtd cannot produce, against a scripted target: failback by AsyncEvent
logout request through the redirector, target NOP-In pings, malformed PDUs."""

from __future__ import annotations

import os
import struct
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from initiator.device import BlockDevice
from initiator.errors import (
    CheckCondition,
    CommandRetriesExhausted,
    LoginError,
    RedirectError,
    TargetProtocolError,
    TargetUnreachable,
)
from initiator.login_flow import LoginOptions
from initiator.session import SessionConfig
from iscsicore.pdu import R2T, DataIn, ScsiCommand, ScsiResponse
from tests.initiator.fake_target import IQN, Address, FakeRedirector, FakeSession, FakeTarget

MiB = 1 << 20


async def test_logout_request_fails_back_through_the_redirector() -> None:
    """A (the remote CVM) asks for a logout; the redirector now sends the vDisk to B (the
    local one): the session logs out of A, logs in through the redirector, lands on B, and
    the I/O stream never sees an error."""
    disk = bytearray(4 * MiB)
    a, b = FakeTarget(disk), FakeTarget(disk)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        redirector = FakeRedirector(destination=a)
        await nursery.start(redirector.serve)

        async def fail_back(session: FakeSession, count: int) -> None:
            if count == 50:
                redirector.destination = b
                await session.logout_request(within=2)

        a.after_command = fail_back
        url = f"iscsi://127.0.0.1:{redirector.port}/{IQN}/0"
        async with BlockDevice.open(url, SessionConfig(replacement_timeout=5)) as device:
            assert device.session.portal is not None and device.session.portal.port == a.port
            payloads = {lba: os.urandom(4096) for lba in range(0, 8 * 200, 8)}
            for lba, payload in payloads.items():
                await device.write(lba, payload)
            for lba, payload in payloads.items():
                assert await device.read(lba, 8) == payload
            assert device.session.portal is not None and device.session.portal.port == b.port
            assert device.stats.reconnects == 1
            assert device.stats.errors == 0
        assert a.logouts == 1
        assert redirector.logins == 2
        nursery.cancel_scope.cancel()


async def test_commands_in_flight_during_a_logout_request_are_reissued() -> None:
    disk = bytearray(4 * MiB)
    a, b = FakeTarget(disk), FakeTarget(disk)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        redirector = FakeRedirector(destination=a)
        await nursery.start(redirector.serve)

        async def fail_back(session: FakeSession, count: int) -> None:
            if count == 20:
                redirector.destination = b
                await session.logout_request(within=1)

        a.after_command = fail_back
        url = f"iscsi://127.0.0.1:{redirector.port}/{IQN}/0"
        async with BlockDevice.open(url, SessionConfig(replacement_timeout=5)) as device:

            async def writer(first: int) -> None:
                for lba in range(first, first + 64 * 8, 8):
                    await device.write(lba, bytes([lba % 251]) * 4096)

            async with trio.open_nursery() as workers:
                for worker in range(8):
                    workers.start_soon(writer, worker * 64 * 8)
            for lba in range(0, 8 * 64 * 8, 8):
                assert await device.read(lba, 8) == bytes([lba % 251]) * 4096
            assert device.session.portal is not None and device.session.portal.port == b.port
        nursery.cancel_scope.cancel()


async def test_target_nop_in_ping_is_answered() -> None:
    target = FakeTarget(bytearray(1 * MiB))
    async with trio.open_nursery() as nursery:
        await nursery.start(target.serve)
        url = f"iscsi://127.0.0.1:{target.port}/{IQN}/0"
        async with BlockDevice.open(url) as device:
            await target.sessions[-1].ping(0xABCD)
            with trio.fail_after(5):
                while not target.nop_replies:
                    await trio.sleep(0.01)
            assert target.nop_replies == [0xABCD]
            assert await device.session.ping() < 1.0
        nursery.cancel_scope.cancel()


async def test_garbage_after_login_is_a_typed_error_not_a_hang() -> None:
    """An unknown opcode right after login: the session drops the connection, reconnects
    (into the same garbage) and fails commands with TargetUnreachable in bounded time."""
    target = FakeTarget(bytearray(1 * MiB), garbage_after_login=b"\x3e" + bytes(47))
    async with trio.open_nursery() as nursery:
        await nursery.start(target.serve)
        url = f"iscsi://127.0.0.1:{target.port}/{IQN}/0"
        config = SessionConfig(replacement_timeout=1.0)
        with (
            trio.fail_after(10),
            pytest.raises(
                (TargetUnreachable, TargetProtocolError, CommandRetriesExhausted)
            ) as caught,
        ):
            async with BlockDevice.open(url, config):
                pass
        assert "opcode" in str(caught.value).lower()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "reply",
    ids=["login-junk", "initiator-opcode", "all-ones", "http"],
    argvalues=[
        b"\x23" + bytes(47),  # a Login Response with version and status junk
        b"\x00" * 48,  # a NOP-Out: an initiator opcode from a target
        b"\xff" * 48,
        b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(20),
    ],
)
async def test_malformed_login_answers_are_typed_errors(reply: bytes) -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(reply)
        await trio.sleep(5)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        url = f"iscsi://127.0.0.1:{port}/{IQN}/0"
        config = SessionConfig(login=LoginOptions(login_timeout=3.0))
        with trio.fail_after(10), pytest.raises((LoginError, TargetProtocolError)):
            async with BlockDevice.open(url, config):
                pass
        nursery.cancel_scope.cancel()


async def run_with_responder(
    respond: Callable[[FakeSession, ScsiCommand], Awaitable[bool]],
    body: Callable[[BlockDevice], Awaitable[None]],
    target: FakeTarget | None = None,
) -> None:
    target = target or FakeTarget(bytearray(1 * MiB))
    async with trio.open_nursery() as nursery:
        await nursery.start(target.serve)
        url = f"iscsi://127.0.0.1:{target.port}/{IQN}/0"
        async with BlockDevice.open(url, SessionConfig(replacement_timeout=2)) as device:
            target.respond = respond
            with trio.fail_after(10):
                await body(device)
        nursery.cancel_scope.cancel()


def is_read(cmd: ScsiCommand) -> bool:
    return cmd.cdb[0] == 0x88


async def test_data_in_beyond_the_buffer_fails_only_that_command() -> None:
    async def overrun(session: FakeSession, cmd: ScsiCommand) -> bool:
        if not is_read(cmd) or cmd.expected_data_transfer_length != 512:
            return False
        await session.send(
            DataIn(
                final=True, status_present=True, itt=cmd.itt, buffer_offset=256,
                data=bytes(512), **session.completion_fields(),
            )
        )  # fmt: skip
        return True

    async def body(device: BlockDevice) -> None:
        with pytest.raises(TargetProtocolError, match="beyond"):
            await device.read(0, 1)
        assert await device.read(0, 2) == bytes(1024)  # the session goes on

    await run_with_responder(overrun, body)


async def test_data_in_out_of_sequence_fails_only_that_command() -> None:
    """Data-In PDUs arrive in DataSN and offset order at error recovery level 0: one after
    a DataSN gap fails its command (iscsicore.fullfeature.sequence), not the session."""

    async def gap(session: FakeSession, cmd: ScsiCommand) -> bool:
        if not is_read(cmd) or cmd.expected_data_transfer_length != 1024:
            return False
        await session.send(
            DataIn(
                itt=cmd.itt, data_sn=0, data=bytes(512), exp_cmd_sn=session.exp_cmd_sn,
                max_cmd_sn=session.exp_cmd_sn + 31,
            )
        )  # fmt: skip
        await session.send(
            DataIn(
                final=True, status_present=True, itt=cmd.itt, data_sn=2, buffer_offset=512,
                data=bytes(512), **session.completion_fields(),
            )
        )  # fmt: skip
        return True

    async def body(device: BlockDevice) -> None:
        with pytest.raises(TargetProtocolError, match="out of sequence"):
            await device.read(0, 2)
        assert await device.read(0, 4) == bytes(2048)  # the session goes on

    await run_with_responder(gap, body)


async def test_r2t_beyond_the_write_fails_that_command() -> None:
    async def bad_r2t(session: FakeSession, cmd: ScsiCommand) -> bool:
        if cmd.cdb[0] != 0x8A:
            return False
        await session.send(
            R2T(
                itt=cmd.itt, ttt=9, buffer_offset=0, desired_data_transfer_length=1 << 30,
                stat_sn=session.stat_sn, exp_cmd_sn=session.exp_cmd_sn,
                max_cmd_sn=session.exp_cmd_sn + 31,
            )
        )  # fmt: skip
        return True

    async def body(device: BlockDevice) -> None:
        with pytest.raises(TargetProtocolError, match="R2T"):
            await device.write(0, bytes(512 * 200))

    await run_with_responder(bad_r2t, body)


async def test_unknown_tags_are_ignored_and_check_condition_is_decoded() -> None:
    sense = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0, 0, 0])

    async def answer(session: FakeSession, cmd: ScsiCommand) -> bool:
        if not is_read(cmd):
            return False
        stray = DataIn(final=True, itt=cmd.itt ^ 0xFFFF, data=bytes(8), **session.status_fields())
        response = ScsiResponse(
            itt=cmd.itt,
            status=2,
            data=struct.pack(">H", len(sense)) + sense,
            **session.completion_fields(),
        )
        await session.send(stray, response)
        return True

    async def body(device: BlockDevice) -> None:
        with pytest.raises(CheckCondition) as caught:
            await device.read(0, 1)
        assert (caught.value.sense_key, caught.value.asc) == (5, 0x24)

    await run_with_responder(answer, body)


async def test_a_target_that_never_answers_a_command_is_caught_by_nop() -> None:
    """A target that swallows commands but answers nothing else: NOP-Out pings keep
    working, so this is a hung command, not a dead target; the caller's own timeout
    applies. With pings unanswered too (frozen tgtd) see test_failover_tgtd."""

    async def swallow(session: FakeSession, cmd: ScsiCommand) -> bool:
        return is_read(cmd)

    async def body(device: BlockDevice) -> None:
        with trio.move_on_after(0.5) as scope:
            await device.read(0, 1)
        assert scope.cancelled_caught
        assert device.session.outstanding == 0  # the cancelled command's tag is released
        await device.write(0, bytes(512))

    await run_with_responder(swallow, body)


async def test_redirect_to_an_ipv6_portal() -> None:
    target = FakeTarget(bytearray(1 * MiB), host="::1")
    async with trio.open_nursery() as nursery:
        await nursery.start(target.serve)
        redirector = FakeRedirector(destination=target)
        await nursery.start(redirector.serve)
        async with BlockDevice.open(f"iscsi://127.0.0.1:{redirector.port}/{IQN}/0") as device:
            assert device.session.portal is not None
            assert device.session.portal.host == "::1"
            assert device.stats.portal == f"[::1]:{target.port},1"
            await device.write(0, b"6" * 512)
        async with BlockDevice.open(f"iscsi://[::1]:{target.port}/{IQN}/0") as direct:
            assert await direct.read(0, 1) == b"6" * 512
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("immediate_data", "initial_r2t", "unsolicited_pdus"),
    [(True, False, 7), (False, False, 8), (True, True, 0), (False, True, 0)],
)
async def test_write_data_paths(
    immediate_data: bool, initial_r2t: bool, unsolicited_pdus: int
) -> None:
    """MaxRecvDataSegmentLength 8 KiB, FirstBurstLength 64 KiB, MaxBurstLength 256 KiB: a
    1 MiB + 4 KiB write goes as immediate data, unsolicited Data-Out (TTT 0xffffffff) up to
    the first burst, then R2T-solicited bursts, each PDU within 8 KiB; the read comes back
    as 8 KiB Data-In PDUs when the initiator declares 8 KiB."""
    target = FakeTarget(
        bytearray(4 * MiB),
        max_recv_data_segment_length=8192,
        first_burst_length=65536,
        max_burst_length=262144,
        immediate_data=immediate_data,
        initial_r2t=initial_r2t,
    )
    payload = os.urandom(MiB + 4096)
    config = SessionConfig(login=LoginOptions(max_recv_data_segment_length=8192))
    async with trio.open_nursery() as nursery:
        await nursery.start(target.serve)
        url = f"iscsi://127.0.0.1:{target.port}/{IQN}/0"
        async with BlockDevice.open(url, config) as device:
            params = device.session.params
            assert (params.immediate_data, params.initial_r2t) == (immediate_data, initial_r2t)
            await device.write(8, payload)
            assert await device.read(8, len(payload) // 512) == payload
        nursery.cancel_scope.cancel()
    unsolicited = [d for d in target.data_outs if d[0] == 0xFFFFFFFF]
    solicited = [d for d in target.data_outs if d[0] != 0xFFFFFFFF]
    assert len(unsolicited) == unsolicited_pdus
    assert all(length <= 8192 for _, _, length in target.data_outs)
    first_solicited = 65536 if not initial_r2t else (8192 if immediate_data else 0)
    assert solicited[0][1] == first_solicited
    assert len({ttt for ttt, _, _ in solicited}) == -(-(len(payload) - first_solicited) // 262144)


@pytest.mark.parametrize("window", [1, 3])
async def test_cmdsn_window_is_respected(window: int) -> None:
    """The target grants `window` commands; the responses are held back a little so that
    callers pile up: nothing beyond MaxCmdSN may be sent, and everything completes."""
    target = FakeTarget(bytearray(1 * MiB), window=window)
    held: list[ScsiCommand] = []

    async def slow_reads(session: FakeSession, cmd: ScsiCommand) -> bool:
        if not is_read(cmd) or cmd.expected_data_transfer_length != 4096:
            return False
        held.append(cmd)
        await trio.sleep(0.005)
        await session.send_read(cmd, bytes(4096))
        return True

    async def body(device: BlockDevice) -> None:
        async with trio.open_nursery() as nursery:
            for lba in range(0, 32 * 8, 8):
                nursery.start_soon(device.read, lba, 8)

    await run_with_responder(slow_reads, body, target)
    assert len(held) == 32
    assert target.window_violations == []


async def test_underflow_residual_trims_the_data() -> None:
    async def short_read(session: FakeSession, cmd: ScsiCommand) -> bool:
        if not is_read(cmd) or cmd.expected_data_transfer_length != 4096:
            return False
        await session.send(
            DataIn(
                final=True, status_present=True, underflow=True, residual_count=3584,
                itt=cmd.itt, data=b"r" * 512, **session.completion_fields(),
            )
        )  # fmt: skip
        return True

    async def body(device: BlockDevice) -> None:
        result = await device.execute(
            bytes([0x88, 0]) + bytes(8) + (8).to_bytes(4, "big") + bytes(2), read_length=4096
        )
        assert result.underflow and result.residual == 3584
        assert bytes(result.data) == b"r" * 512

    await run_with_responder(short_read, body)


@pytest.mark.parametrize(("hops", "ok"), [(8, True), (9, False)])
async def test_redirect_hops_are_bounded(hops: int, ok: bool) -> None:
    """A chain of redirectors: 8 hops are followed (libiscsi-like bound), a 9th is refused."""
    target = FakeTarget(bytearray(1 * MiB))
    async with trio.open_nursery() as nursery:
        await nursery.start(target.serve)
        destination: FakeTarget | Address = target
        first: FakeRedirector | None = None
        for _ in range(hops):
            first = FakeRedirector(destination=destination)
            await nursery.start(first.serve)
            destination = Address(first.host, first.port)
        assert first is not None
        url = f"iscsi://127.0.0.1:{first.port}/{IQN}/0"
        if ok:
            async with BlockDevice.open(url) as device:
                assert device.session.portal is not None
                assert device.session.portal.port == target.port
        else:
            with pytest.raises(RedirectError, match="more than 8 redirects"):
                async with BlockDevice.open(url):
                    pass
        nursery.cancel_scope.cancel()
