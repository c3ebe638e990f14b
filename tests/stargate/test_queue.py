"""The shared command queue: inline admission, per-vDisk round-robin, TASK SET FULL, and the
CmdSN window it drives."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
from hypothesis import given
from hypothesis import strategies as st

from iscsicore.cmdsn import Arrival
from iscsicore.pdu import R2T, RESERVED_TAG, DataIn, NopIn, ScsiResponse
from iscsicore.scsi.opcodes import ScsiStatus
from iscsicore.seqnum import sn_diff
from stargate.queue import Admission, CommandQueue
from stargate.session import Session, SessionType
from tests.stargate.client import (
    TEST_UNIT_READY,
    TestInitiator,
    clear_unit_attention,
    logged_in,
    memory_target,
    proposals,
    read10,
    start_stargate,
    write10,
)


@dataclass(eq=False)
class Job:
    vdisk: str
    log: list[str]
    queue: CommandQueue | None = None
    cancelled: bool = False
    hold: bool = False
    name: str = field(default="")
    buffer_bytes: int = 0

    def dispatch(self) -> None:
        self.log.append(self.vdisk)
        if not self.hold and self.queue is not None:
            self.queue.release()  # runs inline, like a read


def test_admission_runs_inline_until_full_then_waits_then_refuses() -> None:
    queue = CommandQueue(2, max_waiting=1)
    log: list[str] = []
    assert queue.admit("a", Job("a", log)) is Admission.RUN
    assert queue.admit("a", Job("a", log)) is Admission.RUN
    assert queue.admit("b", Job("b", log)) is Admission.QUEUED
    assert queue.admit("b", Job("b", log)) is Admission.FULL
    assert queue.task_set_full_count == 1
    queue.release()
    assert log == ["b"] and queue.in_flight == 2 and queue.waiting == 0


def test_waiting_commands_are_served_round_robin_across_vdisks() -> None:
    queue = CommandQueue(1, max_waiting=100)
    log: list[str] = []
    assert queue.admit("busy", Job("busy", log, queue, hold=True)) is Admission.RUN
    for _ in range(6):
        queue.admit("busy", Job("busy", log, queue))
    queue.admit("quiet", Job("quiet", log, queue))
    queue.admit("other", Job("other", log, queue))
    queue.release()  # the held one finishes; everything queued runs inline
    assert log[:4] == ["busy", "quiet", "other", "busy"]
    assert queue.in_flight == 0 and queue.waiting == 0


def test_cancelled_waiters_are_skipped_and_forgotten() -> None:
    queue = CommandQueue(1, max_waiting=10)
    log: list[str] = []
    queue.admit("a", Job("a", log, queue, hold=True))
    doomed = Job("a", log, queue)
    queue.admit("a", doomed)
    queue.admit("b", Job("b", log, queue))
    doomed.cancelled = True
    queue.forget_cancelled()
    assert queue.waiting == 1
    queue.release()
    assert log == ["b"]


def test_window_share_splits_free_slots_and_reports_reopening() -> None:
    queue = CommandQueue(8)
    opened: list[str] = []

    class Listener:
        def window_opened(self) -> None:
            opened.append("x")

    listener = Listener()
    queue.session_opened()
    queue.session_opened()
    assert queue.window_share(listener) == 4
    for _ in range(8):
        queue.admit("a", Job("a", []))
    assert queue.window_share(listener) == 0
    queue.release()
    assert opened == ["x"]
    assert queue.window_share(listener) == 1


def test_write_buffers_are_bounded_across_the_queue() -> None:
    queue = CommandQueue(8, max_buffered_bytes=1000)
    log: list[str] = []
    big = Job("a", log, queue, hold=True, buffer_bytes=5000)
    assert queue.admit("a", big) is Admission.RUN  # an idle queue takes any one command
    assert queue.admit("b", Job("b", log, queue, hold=True, buffer_bytes=10)) is (Admission.QUEUED)
    assert queue.admit("c", Job("c", log, queue)) is Admission.QUEUED  # FIFO behind it
    queue.release(big.buffer_bytes)
    assert log == ["b", "c"]
    assert queue.buffered_bytes == 10 and queue.in_flight == 1


def _session(exp: int) -> Session:
    return Session("iqn.x", 1, 1, SessionType.NORMAL, None, exp_cmd_sn=exp)


@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 64), st.integers(0, 64))
def test_max_cmd_sn_never_moves_back_and_never_below_exp_minus_one(
    start: int, first_share: int, second_share: int
) -> None:
    session = _session(start)
    session.max_cmd_sn = (start - 1) & 0xFFFFFFFF  # a closed window to begin with
    first = session.advertise_window(first_share)
    assert sn_diff(first, session.exp_cmd_sn) >= -1
    assert session.window.arrive(start, immediate=False, item=None) is (
        Arrival.DELIVER if first_share > 0 else Arrival.DROPPED
    )
    second = session.advertise_window(second_share)
    assert sn_diff(second, first) >= 0
    assert sn_diff(second, session.exp_cmd_sn) >= -1


def test_cmd_sn_window_wraps() -> None:
    session = _session(0xFFFFFFFE)
    session.advertise_window(4)  # window 0xfffffffe .. 0x1
    window = session.window
    assert window.arrive(0xFFFFFFFE, immediate=False, item=None) is Arrival.DELIVER
    assert window.arrive(0xFFFFFFFF, immediate=False, item=None) is Arrival.DELIVER
    assert window.arrive(0, immediate=False, item=None) is Arrival.DELIVER
    assert session.exp_cmd_sn == 1
    assert window.arrive(5, immediate=False, item=None) is Arrival.DROPPED
    assert window.arrive(0xFFFFFFF0, immediate=False, item=None) is Arrival.DROPPED
    assert window.arrive(12345, immediate=True, item=None) is Arrival.DELIVER
    assert session.exp_cmd_sn == 1


async def _responses(initiator: TestInitiator, count: int) -> list[DataIn | ScsiResponse]:
    """The next ``count`` statuses, skipping the NOP-Ins that announce a reopened window."""
    found: list[DataIn | ScsiResponse] = []
    while len(found) < count:
        pdu = await initiator.receive()
        if isinstance(pdu, NopIn):
            assert pdu.itt == RESERVED_TAG and pdu.ttt == RESERVED_TAG
            continue
        assert isinstance(pdu, (DataIn, ScsiResponse)), pdu
        if isinstance(pdu, ScsiResponse) or pdu.status_present:
            found.append(pdu)
    return found


async def test_full_queue_answers_task_set_full_then_serves_the_waiters(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(
        nursery, memory_target("vd1"), memory_target("vd2"), memory_target("vd3"), queue_depth=2
    )
    no_unsolicited = proposals(initial_r2t=True, immediate_data=False)
    writer = await logged_in(server, "vd1", proposals=no_unsolicited)
    waiters = [await logged_in(server, "vd2"), await logged_in(server, "vd3")]
    late = await logged_in(server, "vd2")
    for initiator in (writer, *waiters, late):
        await clear_unit_attention(initiator)
    # Idle, four sessions share two slots: each may send one more command.
    assert sn_diff(late.max_cmd_sn, late.cmd_sn) == 0
    # Two writes wait for their data: both slots are held.
    writes = [writer.command(write10(i, 1), write_data=bytes(512)) for i in range(2)]
    for command in writes:
        await writer.send(command)
    r2ts = [await writer.receive(), await writer.receive()]
    assert all(isinstance(r2t, R2T) for r2t in r2ts)
    assert server.queue.in_flight == 2
    # Commands sent within windows granted earlier wait for a slot, per vDisk.
    queued = [waiter.command(read10(0, 1), read_length=512) for waiter in waiters]
    for waiter, command in zip(waiters, queued, strict=True):
        await waiter.send(command)
    with trio.fail_after(2):
        while server.queue.waiting < 2:
            await trio.sleep(0.01)
    assert await waiters[0].receive_or_none(0.2) is None
    # The waiting room is full: TASK SET FULL, and the window stays shut.
    await late.send(late.command(TEST_UNIT_READY))
    full = await late.receive()
    assert isinstance(full, ScsiResponse) and full.status == ScsiStatus.TASK_SET_FULL
    assert sn_diff(full.max_cmd_sn, full.exp_cmd_sn) == -1
    # Data for the writes frees the slots; the waiting reads then complete.
    for command, r2t in zip(writes, r2ts, strict=True):
        assert isinstance(r2t, R2T)
        await writer.send_data_out(command.itt, r2t.ttt, bytes(512), 0, 512)
    responses = await _responses(writer, len(writes))
    assert all(pdu.status == ScsiStatus.GOOD for pdu in responses)
    for waiter in waiters:
        (read,) = await _responses(waiter, 1)
        assert read.status == ScsiStatus.GOOD
    assert server.queue.in_flight == 0 and server.queue.waiting == 0
    assert server.stats()["vd2"]["task_set_full"] == 1
    # The late session was told its window reopened.
    reopened = await late.receive()
    assert isinstance(reopened, NopIn) and sn_diff(reopened.max_cmd_sn, reopened.exp_cmd_sn) >= 0
