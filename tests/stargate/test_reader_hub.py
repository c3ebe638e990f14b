"""The reader hub: one level-triggered epoll and one task serve every parked connection.

The unit tests drive `ReaderHub` with scripted clients over real socket pairs; the last ones
check that a real server parks its connections with the hub and serves many of them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import trio

from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.keys import SessionParams, SessionType
from iscsicore.pdu import LogoutReason, LogoutRequest, LogoutResponse, ScsiResponse
from iscsicore.scsi.opcodes import ScsiStatus
from stargate.queue import CommandQueue
from stargate.reader_hub import ReaderHub, Turn
from stargate.scsi.command import Nexus
from stargate.scsi.lu import LogicalUnit
from stargate.session import Session
from stargate.stores import MemoryStore
from stargate.target import VDiskTarget
from stargate.transport.runner import FullFeatureConnection
from tests.stargate.client import (
    clear_unit_attention,
    logged_in,
    memory_target,
    read10,
    start_stargate,
    write10,
)
from topology.vdisk import VDiskMeta


@dataclass
class ScriptedClient:
    """Reads what its socket holds and answers with the next scripted turn (IDLE after)."""

    name: str
    sock: socket.socket
    script: list[Turn | Exception] = field(default_factory=list)
    log: list[tuple[str, bool, bytes]] = field(default_factory=list)
    on_turn: Callable[[], None] | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve_turn(self, receive: bool) -> Turn:
        data = b""
        if receive:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return Turn.IDLE
        self.log.append((self.name, receive, data))
        if self.on_turn is not None:
            self.on_turn()
        step = self.script.pop(0) if self.script else Turn.IDLE
        if isinstance(step, Exception):
            raise step
        return step


@dataclass
class Pair:
    ours: socket.socket
    peer: socket.socket


@pytest.fixture
def pairs() -> Iterator[Callable[[], Pair]]:
    made: list[Pair] = []

    def make() -> Pair:
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        made.append(Pair(ours, peer))
        return made[-1]

    yield make
    for pair in made:
        pair.ours.close()
        pair.peer.close()


@pytest.fixture
async def hub(nursery: trio.Nursery) -> ReaderHub:
    hub = ReaderHub()
    await nursery.start(hub.run)
    return hub


async def _parked_until_returned(
    hub: ReaderHub, client: ScriptedClient, results: list[object]
) -> None:
    try:
        results.append(await hub.park(client))
    except Exception as error:
        results.append(error)


async def test_a_readable_client_is_served_without_its_task(
    hub: ReaderHub, pairs: Callable[[], Pair], nursery: trio.Nursery
) -> None:
    pair = pairs()
    client = ScriptedClient("a", pair.ours)
    results: list[object] = []
    nursery.start_soon(_parked_until_returned, hub, client, results)
    await trio.testing.wait_all_tasks_blocked()
    assert hub.parked == 1
    for message in (b"one", b"two"):
        pair.peer.send(message)
        with trio.fail_after(5):
            while not client.log or client.log[-1][2] != message:
                await trio.sleep(0.01)
    assert [data for _, _, data in client.log] == [b"one", b"two"]
    assert results == []  # the task stayed parked: the hub served both turns
    assert hub.parked == 1


@pytest.mark.parametrize("turn", [Turn.TASK, Turn.EOF])
async def test_task_and_eof_hand_the_client_back(
    hub: ReaderHub, pairs: Callable[[], Pair], turn: Turn
) -> None:
    pair = pairs()
    pair.peer.send(b"x")
    client = ScriptedClient("a", pair.ours, [turn])
    with trio.fail_after(5):
        assert await hub.park(client) is turn
    assert hub.parked == 0
    pair.peer.send(b"after")  # unregistered: nobody serves it any more
    await trio.sleep(0.05)
    assert len(client.log) == 1


async def test_an_error_in_a_turn_goes_to_that_clients_task_only(
    hub: ReaderHub, pairs: Callable[[], Pair], nursery: trio.Nursery
) -> None:
    broken, healthy = pairs(), pairs()
    healthy_client = ScriptedClient("healthy", healthy.ours)
    results: list[object] = []
    nursery.start_soon(_parked_until_returned, hub, healthy_client, results)
    broken.peer.send(b"x")
    with trio.fail_after(5), pytest.raises(ValueError, match="bad PDU"):
        await hub.park(ScriptedClient("broken", broken.ours, [ValueError("bad PDU")]))
    healthy.peer.send(b"still served")
    with trio.fail_after(5):
        while not healthy_client.log:
            await trio.sleep(0.01)
    assert healthy_client.log == [("healthy", True, b"still served")]
    assert results == [] and hub.parked == 1


async def test_a_client_with_input_left_goes_after_the_others_in_the_next_pass(
    hub: ReaderHub, pairs: Callable[[], Pair], nursery: trio.Nursery
) -> None:
    """Turn.MORE: its budget ran out; it is served again without a receive, after every
    client that was ready in the same pass had its turn."""
    busy_pair, quiet_pair = pairs(), pairs()
    order: list[tuple[str, bool, bytes]] = []
    busy = ScriptedClient("busy", busy_pair.ours, [Turn.MORE, Turn.MORE], log=order)
    quiet = ScriptedClient("quiet", quiet_pair.ours, log=order)
    results: list[object] = []
    nursery.start_soon(_parked_until_returned, hub, busy, results)
    nursery.start_soon(_parked_until_returned, hub, quiet, results)
    await trio.testing.wait_all_tasks_blocked()
    quiet_pair.peer.send(b"q")
    busy_pair.peer.send(b"b")
    with trio.fail_after(5):
        while len(order) < 4:
            await trio.sleep(0.01)
    served = [(name, receive) for name, receive, _ in order]
    assert sorted(served[:2]) == [("busy", True), ("quiet", True)]  # first pass: both
    assert served[2:] == [("busy", False), ("busy", False)]  # then its backlog, turn by turn
    assert results == []


async def test_a_client_with_input_left_receives_no_more_until_it_has_handled_it(
    hub: ReaderHub, pairs: Callable[[], Pair], nursery: trio.Nursery
) -> None:
    """Its socket stays readable, but a receive per turn would grow its buffer without
    bound (a flood of pings): it gets turns without a receive until its turn ends idle."""
    pair = pairs()
    client = ScriptedClient("a", pair.ours, [Turn.MORE, Turn.MORE, Turn.IDLE])
    results: list[object] = []
    nursery.start_soon(_parked_until_returned, hub, client, results)
    await trio.testing.wait_all_tasks_blocked()
    pair.peer.send(b"burst")
    with trio.fail_after(5):
        while not client.log:
            await trio.sleep(0)
    pair.peer.send(b"more")  # readable while the backlog is still there
    with trio.fail_after(5):
        while len(client.log) < 4:
            await trio.sleep(0.01)
    assert [(receive, data) for _, receive, data in client.log] == [
        (True, b"burst"),
        (False, b""),
        (False, b""),
        (True, b"more"),
    ]


async def test_cancelling_a_parked_task_unregisters_its_socket(
    hub: ReaderHub, pairs: Callable[[], Pair]
) -> None:
    pair = pairs()
    client = ScriptedClient("a", pair.ours)
    with trio.move_on_after(0.1) as scope:
        await hub.park(client)
    assert scope.cancelled_caught
    assert hub.parked == 0
    pair.peer.send(b"nobody listens")
    await trio.sleep(0.05)
    assert client.log == []
    assert await _park_and_hand_back(hub, client) is Turn.TASK  # it may park again


async def _park_and_hand_back(hub: ReaderHub, client: ScriptedClient) -> object:
    client.script.append(Turn.TASK)
    with trio.fail_after(5):
        return await hub.park(client)


async def test_a_client_closed_during_anothers_turn_is_not_served(
    hub: ReaderHub, pairs: Callable[[], Pair], nursery: trio.Nursery
) -> None:
    """A turn may end another connection (reinstatement, a LUN reset's drop): that one's
    task is cancelled at once and its readiness in the same pass is ignored."""
    first, second = pairs(), pairs()
    victim_scope = trio.CancelScope()
    victim = ScriptedClient("victim", second.ours)
    killer = ScriptedClient("killer", first.ours, on_turn=victim_scope.cancel)
    victim.on_turn = victim_scope.cancel  # whichever goes first ends the victim
    results: list[object] = []

    async def victim_task() -> None:
        with victim_scope:
            await hub.park(victim)
        results.append("cancelled")

    nursery.start_soon(victim_task)
    nursery.start_soon(_parked_until_returned, hub, killer, results)
    await trio.testing.wait_all_tasks_blocked()
    first.peer.send(b"k")
    second.peer.send(b"v")
    with trio.fail_after(5):
        while "cancelled" not in results:
            await trio.sleep(0.01)
    assert len(victim.log) <= 1  # served at most once, never after its cancellation
    assert hub.parked == 1


async def test_stopping_the_hub_releases_its_clients(pairs: Callable[[], Pair]) -> None:
    hub = ReaderHub()
    with pytest.raises(trio.ClosedResourceError):
        await hub.park(ScriptedClient("early", pairs().ours))
    results: list[object] = []
    hub_scope = trio.CancelScope()

    async def run_hub(task_status: trio.TaskStatus[None]) -> None:
        with hub_scope:
            await hub.run(task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_hub)
        nursery.start_soon(_parked_until_returned, hub, ScriptedClient("a", pairs().ours), results)
        await trio.testing.wait_all_tasks_blocked()
        hub_scope.cancel()  # the server stops; the connection's task is still there
    assert len(results) == 1 and isinstance(results[0], trio.ClosedResourceError)
    assert not hub.running


@pytest.mark.parametrize(("spin_seconds", "caught"), [(0.5, 1), (0.0, 0)])
async def test_the_hub_polls_a_while_before_it_sleeps(
    pairs: Callable[[], Pair], nursery: trio.Nursery, spin_seconds: float, caught: int
) -> None:
    """Busy polling: input that comes within ``spin_seconds`` of a pass is caught before the
    hub sleeps in trio (the wake-up latency at queue depth 1)."""
    hub = ReaderHub(spin_seconds=spin_seconds)
    await nursery.start(hub.run)
    pair = pairs()
    first_served = threading.Event()
    client = ScriptedClient("a", pair.ours, on_turn=first_served.set)
    results: list[object] = []
    nursery.start_soon(_parked_until_returned, hub, client, results)
    await trio.testing.wait_all_tasks_blocked()

    def initiator() -> None:  # a command, and the next one 20 ms after its answer
        pair.peer.send(b"first")
        assert first_served.wait(5)
        time.sleep(0.02)
        pair.peer.send(b"second")

    sender = threading.Thread(target=initiator)
    sender.start()
    with trio.fail_after(5):
        while len(client.log) < 2:
            await trio.sleep(0.001)
    sender.join()
    assert hub.spin_hits == caught


# -- a connection's side: backpressure ----------------------------------------------------


class GatedSocket:
    """A direct socket whose sends wait until the test opens the gate (a full socket)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.gate = trio.Event()
        self.sent: list[bytes] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive_now(self, max_bytes: int) -> bytes | None:
        try:
            return self.sock.recv(max_bytes)
        except BlockingIOError:
            return None

    def try_send(self, data: bytearray) -> None:
        pass  # the socket takes nothing

    async def receive_some(self, max_bytes: int) -> bytes:
        await trio.lowlevel.wait_readable(self.sock)
        return self.sock.recv(max_bytes)

    async def send_all(self, data: bytes | bytearray) -> None:
        await self.gate.wait()
        self.sent.append(bytes(data))


def _vdisk_connection(channel: GatedSocket, hub: ReaderHub) -> FullFeatureConnection:
    meta = VDiskMeta("vd1", 1 << 20)
    session = Session(
        initiator_name="iqn.2026-11.test:i",
        isid=1,
        tsih=1,
        session_type=SessionType.NORMAL,
        target=VDiskTarget("vd1", LogicalUnit(MemoryStore(meta), meta)),
        exp_cmd_sn=1,
    )
    return FullFeatureConnection(
        channel,
        PduFramer(receiving_from="initiator"),
        session,
        SessionParams(),
        CommandQueue(8),
        nexus=Nexus("iqn.2026-11.test:i,i,0x1", "iqn.2010-06.com.nutanix:vmdisk-vd1,t,0x1"),
        cid=0,
        stat_sn=1,
        hub=hub,
    )


async def test_while_another_task_sends_the_hub_reads_nothing_and_a_flush_waits(
    hub: ReaderHub, pairs: Callable[[], Pair], nursery: trio.Nursery
) -> None:
    """The writer task's send waits for a full socket: a turn must not read the initiator's
    next commands (it goes to the connection's task), and a second flush waits for the
    first instead of returning at once."""
    pair = pairs()
    channel = GatedSocket(pair.ours)
    connection = _vdisk_connection(channel, hub)
    connection._out += b"a ping's answer"
    nursery.start_soon(connection._flush)  # the writer: stuck at the gate
    await trio.testing.wait_all_tasks_blocked()
    pair.peer.send(b"next commands")
    assert connection.serve_turn(receive=True) is Turn.TASK
    assert pair.ours.recv(100) == b"next commands"  # still in the socket: not read

    connection._out += b"more output"
    second_done = trio.Event()

    async def second_flush() -> None:
        await connection._flush()
        second_done.set()

    nursery.start_soon(second_flush)
    await trio.testing.wait_all_tasks_blocked()
    assert not second_done.is_set()  # waits for the send in progress
    channel.gate.set()
    with trio.fail_after(5):
        await second_done.wait()
    assert b"".join(channel.sent) == b"a ping's answermore output"


# -- the hub inside a real server ----------------------------------------------------------


async def test_a_server_serves_many_connections_through_its_hub(nursery: trio.Nursery) -> None:
    disks = [memory_target(f"vd{index}", 1 << 20) for index in range(16)]
    server = await start_stargate(nursery, *disks)
    initiators = [await logged_in(server, f"vd{index}") for index in range(16)]
    for initiator in initiators:
        await clear_unit_attention(initiator)
    await trio.testing.wait_all_tasks_blocked()
    assert server.hub.parked == 16  # every idle connection waits in the one epoll

    async def read_back(index: int) -> None:
        initiator = initiators[index]
        block = bytes([index]) * 512
        for lba in range(20):
            assert (await initiator.scsi(write10(lba, 1), write_data=block)).status == 0
            result = await initiator.scsi(read10(lba, 1), read_length=512)
            assert result.status == ScsiStatus.GOOD and bytes(result.data) == block

    with trio.fail_after(30):
        async with trio.open_nursery() as clients:
            for index in range(16):
                clients.start_soon(read_back, index)
    assert server.hub.passes > 0
    for initiator in initiators:
        await initiator.close()
    with trio.fail_after(5):
        while server.hub.parked:
            await trio.sleep(0.01)


async def test_nothing_after_a_logout_in_the_same_turn_is_executed(nursery: trio.Nursery) -> None:
    """A write pipelined behind a Logout in one segment: the turn that handles the Logout
    stops there; the Logout Response is the last PDU and the write is never executed."""
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    before = initiator.command(
        write10(0, 1), write_data=b"\x11" * 512, immediate_data=b"\x11" * 512
    )
    logout = LogoutRequest(
        immediate=True, reason=LogoutReason.CLOSE_SESSION, itt=99, cmd_sn=initiator.cmd_sn
    )
    after = initiator.command(write10(1, 1), write_data=b"\x22" * 512, immediate_data=b"\x22" * 512)
    await initiator.stream.send_all(b"".join(encode_pdu(pdu) for pdu in (before, logout, after)))
    first = await initiator.receive()
    assert isinstance(first, ScsiResponse) and first.status == ScsiStatus.GOOD
    assert isinstance(await initiator.receive(), LogoutResponse)
    with pytest.raises(EOFError):  # nothing answers the write after it: it was not run
        await initiator.receive()
    reader = await logged_in(server)
    await clear_unit_attention(reader)
    result = await reader.scsi(read10(0, 2), read_length=1024)
    assert bytes(result.data) == b"\x11" * 512 + bytes(512)  # the write after it never ran


async def test_commands_buffered_before_a_half_close_are_all_answered(
    nursery: trio.Nursery,
) -> None:
    """40 commands then a FIN in one go, with a neighbour session (turns of 4 PDUs): the
    EOF comes after the commands, so every one of them is answered."""
    server = await start_stargate(nursery)
    neighbour = await logged_in(server, "vd2")
    initiator = await logged_in(server, "vd1")
    await clear_unit_attention(initiator)
    commands = [initiator.command(read10(index, 1), read_length=512) for index in range(40)]
    await initiator.stream.send_all(b"".join(encode_pdu(command) for command in commands))
    assert isinstance(initiator.stream, trio.SocketStream)
    await initiator.stream.send_eof()
    for command in commands:
        result = await initiator.collect(command.itt)
        assert result.status == ScsiStatus.GOOD and len(result.data) == 512
    assert await initiator.closed_by_target()
    await neighbour.close()
