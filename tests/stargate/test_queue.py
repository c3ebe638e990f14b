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
from stargate.queue import Admission, CommandQueue, ShareLimits, Tenant
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
    tenant: Tenant | None = None

    def dispatch(self) -> None:
        self.log.append(self.vdisk)
        if not self.hold and self.queue is not None:
            self.queue.release(self.buffer_bytes, self.tenant)  # runs inline, like a read


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
    # A command that needs no buffer bytes is not held up behind it: a slot is free.
    assert queue.admit("c", Job("c", log, queue)) is Admission.RUN
    queue.release(big.buffer_bytes)
    assert log == ["b"]
    assert queue.buffered_bytes == 10 and queue.in_flight == 2


def _isolating_queue(**limits: ShareLimits) -> CommandQueue:
    return CommandQueue(
        16,
        max_waiting=16,
        max_buffered_bytes=1000,
        session_limits=limits.get("session", ShareLimits(slots=2, buffered_bytes=100, waiting=2)),
        vdisk_limits=limits.get("vdisk", ShareLimits(slots=3, buffered_bytes=150, waiting=3)),
    )


def test_a_session_beyond_its_slots_waits_while_others_still_run_inline() -> None:
    queue = _isolating_queue()
    log: list[str] = []
    hog, other = queue.tenant("a"), queue.tenant("b")
    held = [Job("a", log, queue, hold=True, tenant=hog) for _ in range(2)]
    assert [queue.admit("a", job) for job in held] == [Admission.RUN] * 2
    assert queue.admit("a", Job("a", log, queue, tenant=hog)) is Admission.QUEUED
    # Another session passes the hog's waiting command: on the inline path and on `admit`.
    assert queue.admit_now("b", 0, other)
    queue.release(0, other)
    assert queue.admit("b", Job("b", log, queue, hold=True, tenant=other)) is Admission.RUN
    assert (hog.session.slots, other.session.slots, queue.waiting) == (2, 1, 1)
    queue.release(0, hog)  # one of the hog's finishes: its waiting command gets the slot
    assert log == ["a"] and queue.waiting == 0
    assert hog.session.slots == 1 and hog.vdisk.slots == 1


def test_a_session_beyond_its_waiting_room_gets_task_set_full_alone() -> None:
    queue = _isolating_queue()
    hog, other = queue.tenant("a"), queue.tenant("b")
    admissions = [queue.admit("a", Job("a", [], queue, hold=True, tenant=hog)) for _ in range(6)]
    assert admissions == [Admission.RUN] * 2 + [Admission.QUEUED] * 2 + [Admission.FULL] * 2
    assert queue.task_set_full_count == 2
    assert queue.admit("b", Job("b", [], queue, hold=True, tenant=other)) is Admission.RUN


def test_sessions_of_one_vdisk_share_its_limits_and_others_are_untouched() -> None:
    queue = _isolating_queue()
    first, second, elsewhere = queue.tenant("a"), queue.tenant("a"), queue.tenant("b")
    assert first.vdisk is second.vdisk and first.vdisk is not elsewhere.vdisk
    assert queue.admit("a", Job("a", [], queue, hold=True, tenant=first)) is Admission.RUN
    assert queue.admit("a", Job("a", [], queue, hold=True, tenant=first)) is Admission.RUN
    assert queue.admit("a", Job("a", [], queue, hold=True, tenant=second)) is Admission.RUN
    # vDisk a holds its 3 slots: the second session waits too, vDisk b does not.
    assert queue.admit("a", Job("a", [], queue, hold=True, tenant=second)) is Admission.QUEUED
    assert queue.admit_now("b", 0, elsewhere)


def test_buffer_bytes_are_bounded_per_session_and_per_vdisk() -> None:
    queue = _isolating_queue()
    log: list[str] = []
    first, second, elsewhere = queue.tenant("a"), queue.tenant("a"), queue.tenant("b")
    big = Job("a", log, queue, hold=True, buffer_bytes=90, tenant=first)
    assert queue.admit("a", big) is Admission.RUN
    # The session's 100 bytes: 90 + 20 does not fit; a read (no bytes) still runs.
    assert queue.admit("a", Job("a", log, queue, buffer_bytes=20, tenant=first)) is (
        Admission.QUEUED
    )
    assert queue.admit_now("a", 0, first)
    queue.release(0, first)
    # The vDisk's 150 bytes: the other session of vDisk a may add 60, not 70.
    assert not queue.admit_now("a", 70, second)
    assert queue.admit_now("a", 60, second)
    assert queue.admit_now("b", 100, elsewhere)  # another vDisk: its own bytes
    assert queue.buffered_bytes == 250
    queue.release(90, first)  # the big write is done: the waiting 20 bytes run
    assert log == ["a"] and queue.waiting == 0
    assert (first.session.buffered_bytes, first.vdisk.buffered_bytes) == (0, 60)
    # An idle session takes any one write, even over its limit (no deadlock).
    assert queue.admit_now("a", 500, queue.tenant("a")) is False  # the vDisk is not idle
    assert queue.admit_now("c", 500, queue.tenant("c"))


def test_waiters_held_by_their_own_share_do_not_close_the_others_window() -> None:
    queue = _isolating_queue()
    queue.session_opened()
    queue.session_opened()
    hog = queue.tenant("a")
    for _ in range(4):  # 2 hold slots, 2 wait for the hog's own share
        queue.admit("a", Job("a", [], queue, hold=True, tenant=hog))
    assert (queue.in_flight, queue.waiting) == (2, 2)
    # 14 slots are free for anyone but the hog: each of the two sessions may send 7.
    assert queue.free_slots == 14 and queue.window_share() == 7


def test_cancelled_waiters_give_back_their_place_in_the_waiting_room() -> None:
    queue = _isolating_queue()
    hog = queue.tenant("a")
    for _ in range(2):
        queue.admit("a", Job("a", [], queue, hold=True, tenant=hog))
    doomed = [Job("a", [], queue, tenant=hog) for _ in range(2)]
    assert [queue.admit("a", job) for job in doomed] == [Admission.QUEUED] * 2
    for job in doomed:
        job.cancelled = True
    queue.forget_cancelled()
    assert (queue.waiting, hog.session.waiting, hog.vdisk.waiting) == (0, 0, 0)
    assert queue.admit("a", Job("a", [], queue, tenant=hog)) is Admission.QUEUED


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
