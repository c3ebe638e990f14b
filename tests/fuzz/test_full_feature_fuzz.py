"""Fuzz target for the full-feature dispatch (stargate/transport, FullFeatureConnection)
behind the real server (`StargateServer.serve_stream`), over an in-memory stream (the
connection's own task reads) or loopback TCP (served through the reader hub).

An honest login (digests, R2T and burst settings drawn; a normal or a discovery session),
then a sequence of valid-but-hostile PDUs aimed with what the target said
(tests/fuzz/ffp_inputs.py), now and then with a byte flipped or junk after a PDU, with
small queue depths so that commands wait for slots and write buffers. The oracles, which
hold whatever the CmdSN window, Data-Out deadlines or CHAP policy are:

* the connection handler never fails (the server logs such a failure instead of raising);
* every byte the target sends frames as target PDUs with the negotiated digests, none
  longer than our MaxRecvDataSegmentLength; a CHECK CONDITION carries parsable sense, a
  Reject the 48-byte header it rejects;
* nothing hangs: afterwards an immediate NOP-Out ping is answered or the connection closes
  (after damaged bytes the ping may be taken as the rest of a damaged PDU), and once we
  close, the connection ends (all bounded by trio.fail_after; a watchdog dumps the stacks
  of a synchronous hang);
* nothing leaks: after the connection ends the shared queue has no slot, waiting command,
  buffered byte or session left, and the session table is empty;
* nobody else is harmed: an honest session on the same vDisk, logged in first, gets an
  answer to the READ it sent before the hostile PDUs (unless a TMF legitimately aborted
  it) and to a new READ afterwards (unless a cold reset closed it).
"""

from __future__ import annotations

import faulthandler
import logging
import struct
import time
from dataclasses import dataclass, field

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from iscsicore.framing import encode_pdu
from iscsicore.keys import NONE
from iscsicore.login import LoginDone, LoginProposals
from iscsicore.pdu import (
    BHS_LENGTH,
    RESERVED_TAG,
    LogoutResponse,
    NopIn,
    NopOut,
    Pdu,
    Reject,
    ScsiResponse,
    TaskMgmtRequest,
    TmfFunction,
)
from iscsicore.scsi.opcodes import ScsiStatus
from iscsicore.scsi.sense import parse_sense
from stargate.server import ServerConfig, StargateServer
from stargate.target import TargetRegistry
from tests.fuzz.driver import ErrorLog, count_event, count_example, fuzz_target
from tests.fuzz.ffp_inputs import BLOCK, PROBE_ITT, Observed, hostile_pdu
from tests.stargate.client import TestInitiator, clear_unit_attention, memory_target, read10
from topology.naming import target_name_for

NAME = "test_fuzz_full_feature_dispatch"
MAX_PDUS = 24
ANSWER_TIMEOUT = 5.0  # generous: the machine is shared; a hang takes far longer
LU_BYTES = 1 << 20
WATCHDOG_SECONDS = 60.0
SLOW_EXAMPLE_SECONDS = 5.0


@dataclass
class Trace:
    """What the target sent on the hostile connection."""

    pdus: list[Pdu] = field(default_factory=list)
    closed: bool = False
    tmf_functions: set[int] = field(default_factory=set)  # the TMFs sent
    # Bytes damaged on the way: a changed length field makes the target wait for bytes
    # that never come (the protocol cannot tell; its keepalive ends such a connection).
    damaged: bool = False
    changed: trio.Event = field(default_factory=trio.Event)

    def note(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


proposal_strategy = st.builds(
    lambda header, data, initial_r2t, immediate, first, extra, outstanding, mrdsl: LoginProposals(
        header_digest=("CRC32C",) if header else (NONE,),
        data_digest=("CRC32C",) if data else (NONE,),
        initial_r2t=initial_r2t,
        immediate_data=immediate,
        first_burst_length=first,
        max_burst_length=first + extra,
        max_outstanding_r2t=outstanding,
        max_recv_data_segment_length=mrdsl,
    ),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from([512, 1024, 4096, 65536]),
    st.sampled_from([0, 512, 8192]),
    st.integers(1, 4),
    st.sampled_from([512, 4096, 8192, 262144]),
)


def fuzz_server(queue_depth: int, max_buffered_bytes: int) -> StargateServer:
    registry = TargetRegistry()
    registry.add(memory_target("vd1", LU_BYTES))
    # A small write-buffer budget: commands also wait for buffer bytes, not only slots.
    config = ServerConfig(
        queue_depth=queue_depth,
        max_buffered_bytes=max_buffered_bytes,
        login_timeout=ANSWER_TIMEOUT,
        busy_poll_us=0,
    )
    return StargateServer(registry, config)


@fuzz_target(examples=100)
@given(
    data=st.data(),
    proposals=proposal_strategy,
    queue_depth=st.sampled_from([1, 2, 4, 128]),
    max_buffered_bytes=st.sampled_from([4096, 64 << 10, 1 << 20]),
    transport=st.sampled_from(["memory", "memory", "tcp"]),
    discovery=st.sampled_from([False, False, False, True]),
)
def test_fuzz_full_feature_dispatch(
    data: st.DataObject,
    proposals: LoginProposals,
    queue_depth: int,
    max_buffered_bytes: int,
    transport: str,
    discovery: bool,
) -> None:
    """``transport``: an in-memory stream (the connection's own task reads), or a
    loopback TCP connection served through the reader hub (`serve_turn`). ``discovery``:
    the hostile session is a discovery session (Text and Logout only)."""
    count_example(NAME)
    server = fuzz_server(queue_depth, max_buffered_bytes)
    errors = ErrorLog()
    logging.getLogger("stargate").addHandler(errors)
    # trio.fail_after cannot interrupt a synchronous loop: if one never ends, say where.
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=False)
    started = time.monotonic()
    try:
        target = None if discovery else target_name_for("vd1")
        trio.run(_fuzz_session, data, server, proposals, transport, target)
    finally:
        faulthandler.cancel_dump_traceback_later()
        logging.getLogger("stargate").removeHandler(errors)
    if time.monotonic() - started > SLOW_EXAMPLE_SECONDS:
        count_event(NAME, f"slower than {SLOW_EXAMPLE_SECONDS} s")
    assert not errors.records, [record.getMessage() for record in errors.records]


async def _fuzz_session(
    data: st.DataObject,
    server: StargateServer,
    proposals: LoginProposals,
    transport: str,
    target: str | None,
) -> None:
    async with trio.open_nursery() as nursery:
        if transport == "tcp":
            await nursery.start(server.hub.run)
        bystander = await Bystander.log_in(nursery, server, transport)
        await bystander.start_read()
        ended, trace = await _hostile_connection(
            nursery, data, server, proposals, transport, target
        )
        with trio.fail_after(ANSWER_TIMEOUT):
            await ended.wait()  # serve_stream returned: the connection is torn down
        await bystander.finish(trace)
        queue = server.queue
        assert (queue.in_flight, queue.waiting, queue.buffered_bytes) == (0, 0, 0), (
            f"queue left with {queue.in_flight} slots, {queue.waiting} waiting, "
            f"{queue.buffered_bytes} buffered bytes"
        )
        assert queue.sessions == 0 and len(server.sessions) == 0
        assert not server.all_connections()
        nursery.cancel_scope.cancel()  # the reader hub


async def _serve(server: StargateServer, stream: trio.abc.Stream, ended: trio.Event) -> None:
    try:
        await server.serve_stream(stream)
    finally:
        ended.set()


async def _connected_pair(transport: str) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """(client end, served end)."""
    if transport == "memory":
        return trio.testing.memory_stream_pair()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        served = await listeners[0].accept()
    finally:
        for listener in listeners:
            await listener.aclose()
    return client, served


async def _hostile_connection(
    nursery: trio.Nursery,
    data: st.DataObject,
    server: StargateServer,
    proposals: LoginProposals,
    transport: str,
    target: str | None,
) -> tuple[trio.Event, Trace]:
    client, served = await _connected_pair(transport)
    ended = trio.Event()
    nursery.start_soon(_serve, server, served, ended)
    initiator = TestInitiator(client)
    outcome = await initiator.login(target, proposals=proposals)
    assert isinstance(outcome, LoginDone), outcome
    # The target must respect the segment length we declared.
    initiator.framer.max_recv_data_segment_length = proposals.max_recv_data_segment_length
    observed = Observed(exp_cmd_sn=initiator.cmd_sn, exp_stat_sn=initiator.exp_stat_sn)
    trace = Trace()
    async with trio.open_nursery() as reader_nursery:
        reader_nursery.start_soon(_read_all, initiator, observed, trace)
        with trio.fail_after(ANSWER_TIMEOUT * 4):
            open_ = True
            for step in range(data.draw(st.integers(1, MAX_PDUS), label="PDUs")):
                # Drawn even once the target has closed: how much hypothesis draws must
                # not depend on timing.
                pdu = data.draw(hostile_pdu(observed), label=f"PDU {step}")
                damage = data.draw(damages, label="damage")
                if not open_ or trace.closed:
                    continue
                count_event(NAME, type(pdu).__name__)
                if isinstance(pdu, TaskMgmtRequest):
                    trace.tmf_functions.add(pdu.function)
                open_ = await _send(initiator, pdu, damage)
                trace.damaged |= damage.kind != "none"
                if not open_:
                    continue
                # Let the target handle it and the reader see the answers before the next
                # draw aims at them.
                await trio.testing.wait_all_tasks_blocked(0.0005)
            if not trace.closed:
                await _probe(initiator, observed, trace)
            await client.aclose()
        reader_nursery.cancel_scope.cancel()
    _check_answers(trace)
    return ended, trace


@dataclass(frozen=True)
class Damage:
    """What happens to a PDU's bytes on the way: nothing (mostly), one byte changed
    (a digest or framing error, or just a different PDU), or junk after it."""

    kind: str
    position: int
    xor: int
    junk: bytes


damages = st.builds(
    Damage,
    kind=st.sampled_from(["none"] * 48 + ["flip", "junk"]),
    position=st.integers(0, 1 << 16),
    xor=st.integers(1, 255),
    junk=st.binary(min_size=1, max_size=64),
)


async def _send(initiator: TestInitiator, pdu: Pdu, damage: Damage | None = None) -> bool:
    wire = bytearray(
        encode_pdu(pdu, header_digest=initiator.header_digest, data_digest=initiator.data_digest)
    )
    if damage is not None and damage.kind == "flip":
        wire[damage.position % len(wire)] ^= damage.xor
    elif damage is not None and damage.kind == "junk":
        wire += damage.junk
    try:
        await initiator.stream.send_all(wire)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


async def _read_all(initiator: TestInitiator, observed: Observed, trace: Trace) -> None:
    """Every PDU the target sends, framed with the negotiated settings (a framing error
    here fails the example: the target sent something malformed)."""
    framer = initiator.framer
    while True:
        while (pdu := framer.next_pdu()) is not None:
            trace.pdus.append(pdu)
            observed.saw(pdu)
            trace.note()
        try:
            chunk = await initiator.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            chunk = b""
        if not chunk:
            trace.closed = True
            trace.note()
            return
        framer.feed(chunk)


async def _probe(initiator: TestInitiator, observed: Observed, trace: Trace) -> None:
    """Liveness: an immediate NOP-Out ping is answered, or the connection is closed;
    after damaged bytes the ping may be swallowed as the rest of a damaged PDU."""
    ping = NopOut(
        immediate=True,
        itt=PROBE_ITT,
        ttt=RESERVED_TAG,
        cmd_sn=observed.exp_cmd_sn,
        exp_stat_sn=observed.exp_stat_sn,
        data=b"probe",
    )
    if not await _send(initiator, ping):
        return
    # A damaged stream that is still in sync answers at once: no need to wait long.
    with trio.move_on_after(1.0 if trace.damaged else ANSWER_TIMEOUT) as waited:
        while not trace.closed:
            if any(isinstance(p, NopIn) and p.itt == PROBE_ITT for p in trace.pdus):
                count_event(NAME, "probe answered")
                return
            await trace.changed.wait()
    if waited.cancelled_caught:
        assert trace.damaged, "an immediate NOP-Out ping got no answer: the connection hangs"
        count_event(NAME, "probe swallowed by a damaged stream")
        return
    count_event(NAME, "closed before the probe")


def _check_answers(trace: Trace) -> None:
    for pdu in trace.pdus:
        if isinstance(pdu, ScsiResponse) and pdu.status == ScsiStatus.CHECK_CONDITION:
            assert len(pdu.data) >= 2, "CHECK CONDITION without sense"
            (length,) = struct.unpack_from(">H", pdu.data)
            assert length > 0
            parse_sense(bytes(pdu.data[2 : 2 + length]))
        elif isinstance(pdu, Reject):
            assert len(pdu.data) == BHS_LENGTH, "a Reject carries the rejected header"
        elif isinstance(pdu, LogoutResponse):
            count_event(NAME, "logout")
        if isinstance(pdu, ScsiResponse | Reject):
            count_event(NAME, f"answer {type(pdu).__name__}")


# TMFs whose effects reach other sessions: their tasks aborted without an answer
# (TAS=0), or, for a cold reset, every connection of the target closed.
_CROSS_SESSION_TMFS = frozenset(
    {
        TmfFunction.CLEAR_TASK_SET,
        TmfFunction.LOGICAL_UNIT_RESET,
        TmfFunction.TARGET_WARM_RESET,
        TmfFunction.TARGET_COLD_RESET,
    }
)


@dataclass
class Bystander:
    """An honest session on the same vDisk, logged in before the hostile one: it must not
    be harmed. Its READ, sent before the hostile PDUs, is answered once the hostile
    connection has gone (it may have waited for a queue slot), unless a TMF of the other
    session legitimately aborted it; a new READ is answered too."""

    initiator: TestInitiator
    ended: trio.Event
    itt: int = 0

    @classmethod
    async def log_in(
        cls, nursery: trio.Nursery, server: StargateServer, transport: str
    ) -> Bystander:
        client, served = await _connected_pair(transport)
        ended = trio.Event()
        nursery.start_soon(_serve, server, served, ended)
        initiator = TestInitiator(client)
        with trio.fail_after(ANSWER_TIMEOUT):
            outcome = await initiator.login(target_name_for("vd1"))
            assert isinstance(outcome, LoginDone), outcome
            await clear_unit_attention(initiator)
        return cls(initiator, ended)

    async def start_read(self) -> None:
        command = self.initiator.command(read10(0, 1), read_length=BLOCK)
        self.itt = command.itt
        await self.initiator.send(command)

    async def finish(self, hostile: Trace) -> None:
        initiator = self.initiator
        with trio.fail_after(ANSWER_TIMEOUT * 2):
            if TmfFunction.TARGET_COLD_RESET in hostile.tmf_functions:
                await initiator.close()  # it may have been closed with everybody else
            else:
                if not hostile.tmf_functions & _CROSS_SESSION_TMFS:
                    result = await initiator.collect(self.itt)
                    assert result.status is not None
                    count_event(NAME, f"bystander status {result.status:#x}")
                result = await initiator.scsi(read10(1, 1), read_length=BLOCK)
                assert result.status is not None, "the bystander's READ got no status"
                await initiator.close()
            await self.ended.wait()
