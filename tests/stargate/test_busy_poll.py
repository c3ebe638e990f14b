"""Busy polling: the only vDisk session polls its socket a while before it waits (QD 1
latency), and never while another vDisk session could need the thread."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import trio

from iscsicore.framing import PduFramer
from iscsicore.keys import SessionParams, SessionType
from stargate.connection import FullFeatureConnection
from stargate.queue import CommandQueue
from stargate.scsi.command import Nexus
from stargate.scsi.lu import LogicalUnit
from stargate.server import DirectSocket
from stargate.session import Session
from stargate.stores import MemoryStore, VDiskMeta
from stargate.target import VDiskTarget

NEXUS = Nexus("iqn.2026-11.test:i,i,0x1", "iqn.2010-06.com.nutanix:vmdisk-vd1,t,0x1")


class PollingChannel:
    """A channel with a busy-poll knob: records the knob the connection set before its
    receive; the initiator is then gone."""

    def __init__(self) -> None:
        self.spin_seconds = 0.0
        self.seen: list[float] = []

    async def receive_some(self, max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint()
        self.seen.append(self.spin_seconds)
        return b""

    async def send_all(self, data: bytes | bytearray) -> None:
        await trio.lowlevel.checkpoint()


def _connection(
    channel: PollingChannel, queue: CommandQueue, *, vdisk: bool, poll: float = 50e-6
) -> FullFeatureConnection:
    target = None
    if vdisk:
        meta = VDiskMeta("vd1", 1 << 20)
        target = VDiskTarget("vd1", LogicalUnit(MemoryStore(meta), meta))
    session = Session(
        initiator_name="iqn.2026-11.test:i",
        isid=1,
        tsih=1,
        session_type=SessionType.NORMAL if vdisk else SessionType.DISCOVERY,
        target=target,
        exp_cmd_sn=1,
    )
    return FullFeatureConnection(
        channel,
        PduFramer(receiving_from="initiator"),
        session,
        SessionParams(),
        queue,
        nexus=NEXUS,
        cid=0,
        stat_sn=1,
        busy_poll_seconds=poll,
    )


@pytest.mark.parametrize(
    ("neighbours", "vdisk", "poll", "expected"),
    [
        (0, True, 50e-6, 50e-6),  # alone: polls
        (1, True, 50e-6, 0.0),  # another vDisk session: never
        (0, True, 0.0, 0.0),  # --busy-poll-us 0
    ],
)
async def test_only_a_lone_vdisk_session_polls(
    neighbours: int, vdisk: bool, poll: float, expected: float
) -> None:
    queue = CommandQueue(8)
    for _ in range(neighbours):
        queue.session_opened()
    channel = PollingChannel()
    await _connection(channel, queue, vdisk=vdisk, poll=poll).run()
    assert channel.seen == [expected]
    assert queue.sessions == neighbours  # its own count was given back


async def test_discovery_sessions_take_no_share_of_the_queue() -> None:
    queue = CommandQueue(8)
    opened: list[int] = []

    async def discovery() -> None:
        channel = PollingChannel()
        connection = _connection(channel, queue, vdisk=False)
        opened.append(queue.sessions)
        await connection.run()
        opened.append(queue.sessions)

    await discovery()
    assert opened == [0, 0]  # a health-checking redirector does not make a vDisk less alone


def _direct_socket_pair() -> tuple[trio.SocketStream, DirectSocket, socket.socket]:
    """Our end (the stream owns the descriptor: keep it), its DirectSocket, the peer."""
    ours, theirs = trio.socket.socketpair()
    stream = trio.SocketStream(ours)
    return stream, DirectSocket(stream), socket.socket(fileno=theirs.detach())


async def test_a_command_within_the_poll_window_is_taken_without_waiting() -> None:
    stream, direct, peer = _direct_socket_pair()
    with peer:
        direct.spin_seconds = 0.5
        sender = threading.Timer(0.02, peer.send, args=(b"next command",))
        sender.start()
        started = time.perf_counter()
        data = direct._spin_receive(4096)
        sender.join()
        assert data == b"next command"
        assert time.perf_counter() - started < 0.5
    direct.detach()
    await stream.aclose()


async def test_the_poll_gives_up_after_its_window_then_waits() -> None:
    stream, direct, peer = _direct_socket_pair()
    with peer:
        direct.spin_seconds = 0.01
        started = time.perf_counter()
        assert direct._spin_receive(4096) is None
        assert time.perf_counter() - started >= 0.01
        threading.Timer(0.05, peer.send, args=(b"late",)).start()
        with trio.fail_after(5):
            assert await direct.receive_some(4096) == b"late"  # the wait path
    direct.detach()
    await stream.aclose()
