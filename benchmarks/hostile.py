"""A hostile iSCSI client, raw PDU by raw PDU, for the isolation benchmark.

    python -m benchmarks.hostile slot-hog iscsi://127.0.0.1:3260/<iqn>/<lun> --seconds 5

It attacks one LUN for at most ``--seconds`` (or until its stdin closes, with
``--until-stdin-eof``; with ``--wait-for-go`` it prints ``loaded`` and starts at the first
line on stdin), prints ``ready`` once the attack is under way, then one JSON line:
what it sent and what the target answered (statuses, Rejects, dropped connections). Kinds:

- slot-hog: WRITE(10)s of 1 MiB, as many as the CmdSN window allows, with ImmediateData=No
  and InitialR2T=Yes; their Data-Out is never sent, so each holds whatever the target gives
  a write waiting for data (a queue slot, a buffer). NOP-In pings are answered.
- trickle: a WRITE(10) with 64 KiB of immediate data whose data segment is sent one byte at
  a time (1 ms apart), then the next one.
- nop-flood: immediate NOP-Out pings as fast as the connection takes them.
- garbage: random bytes before or after login, PDUs with an undefined opcode, a SCSI Command
  announcing a 16 MiB data segment; a new connection after each (answer, drop or 0.3 s).

It speaks through the shared codec (`encode_pdu`, `PduFramer`) and login machine
(`InitiatorLogin`), like tests/stargate/client.py, and takes every protocol decision itself.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import trio

from initiator.cdb import parse_read_capacity10, read_capacity10
from initiator.url import UrlError, parse_url
from iscsicore.errors import IscsiProtocolError
from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.keys import SessionParams
from iscsicore.login import InitiatorLogin, LoginDone, LoginProposals
from iscsicore.pdu import (
    R2T,
    RESERVED_TAG,
    DataIn,
    LoginRequest,
    LoginResponse,
    NopIn,
    NopOut,
    Pdu,
    Reject,
    RejectReason,
    ScsiCommand,
    ScsiResponse,
    lun_from_number,
)
from iscsicore.scsi.cdb import encode_block_cdb
from iscsicore.scsi.opcodes import ScsiOp, ScsiStatus
from iscsicore.seqnum import sn_add, sn_le

INITIATOR_NAME = "iqn.2026-12.bench:hostile"
CONNECT_TIMEOUT = 5.0
LOGIN_TIMEOUT = 5.0
RETRY_PAUSE = 0.05  # after a refused connection or login
BHS_LENGTH = 48

HOG_WRITE_BYTES = 1 << 20
HOG_MAX_COMMANDS = 100_000  # per connection: a bound, never reached in a run of seconds
HOG_PROPOSALS = LoginProposals(immediate_data=False, initial_r2t=True)
TRICKLE_BYTES = 64 * 1024
TRICKLE_INTERVAL = 0.001
NOP_BATCH = 64
GARBAGE_BYTES = 1024
GARBAGE_PDUS = 8
GARBAGE_WAIT = 0.3  # how long a garbage connection waits for the target's answer
UNDEFINED_OPCODE = 0x0F  # no initiator PDU has it
OVERSIZED_SEGMENT = 0xFFFFFF  # the largest DataSegmentLength: far above any MRDSL
MAX_ERRORS_KEPT = 20

_isids = itertools.count(0x420000000001 + os.getpid() * 0x10000)


class HostileKind(StrEnum):
    SLOT_HOG = "slot-hog"
    TRICKLE = "trickle"
    NOP_FLOOD = "nop-flood"
    GARBAGE = "garbage"


class GarbageMode(StrEnum):
    BYTES_BEFORE_LOGIN = "bytes-before-login"
    BYTES_AFTER_LOGIN = "bytes-after-login"
    UNDEFINED_OPCODE = "undefined-opcode"
    OVERSIZED_SEGMENT = "oversized-segment"


class TargetClosed(Exception):
    """The target closed (or reset) the connection, or sent bytes we cannot frame."""


@dataclass(frozen=True)
class HostileTarget:
    host: str
    port: int
    target_name: str
    lun: int

    @classmethod
    def from_url(cls, url: str) -> HostileTarget:
        parsed = parse_url(url)
        return cls(parsed.portal.connect_host, parsed.portal.port, parsed.target, parsed.lun)


@dataclass
class HostileReport:
    """What the hostile client did and what came back (the JSON it prints)."""

    kind: str
    seconds: float = 0.0
    connections: int = 0
    connect_failures: int = 0
    logins: int = 0
    login_failures: int = 0
    drops: int = 0  # connections the target closed or reset
    bytes_sent: int = 0
    commands_sent: int = 0
    nop_outs_sent: int = 0
    received: Counter[str] = field(default_factory=Counter)  # PDUs by type
    statuses: Counter[str] = field(default_factory=Counter)  # SCSI statuses by name
    rejects: Counter[str] = field(default_factory=Counter)  # Reject reasons by name
    r2ts: int = 0
    held_max: int = 0  # slot hog: most writes at once that had an R2T and no status
    outstanding_max: int = 0  # slot hog: most writes at once sent and without status
    trickled_bytes: int = 0
    garbage: dict[str, Counter[str]] = field(default_factory=dict)  # mode -> outcomes
    errors: list[str] = field(default_factory=list)

    @property
    def task_set_full(self) -> int:
        return self.statuses[ScsiStatus.TASK_SET_FULL.name]

    def record(self, pdu: Pdu) -> None:
        self.received[type(pdu).__name__] += 1
        if isinstance(pdu, ScsiResponse) or (isinstance(pdu, DataIn) and pdu.status_present):
            self.statuses[status_name(pdu.status)] += 1
        elif isinstance(pdu, Reject):
            self.rejects[reject_reason_name(pdu.reason)] += 1
        elif isinstance(pdu, R2T):
            self.r2ts += 1

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(message[:300])

    def garbage_outcome(self, mode: GarbageMode, outcome: str) -> None:
        self.garbage.setdefault(mode.value, Counter())[outcome] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seconds": round(self.seconds, 3),
            "connections": self.connections,
            "connect_failures": self.connect_failures,
            "logins": self.logins,
            "login_failures": self.login_failures,
            "drops": self.drops,
            "bytes_sent": self.bytes_sent,
            "commands_sent": self.commands_sent,
            "nop_outs_sent": self.nop_outs_sent,
            "received": dict(self.received),
            "statuses": dict(self.statuses),
            "task_set_full": self.task_set_full,
            "rejects": dict(self.rejects),
            "r2ts": self.r2ts,
            "held_max": self.held_max,
            "outstanding_max": self.outstanding_max,
            "trickled_bytes": self.trickled_bytes,
            "garbage": {mode: dict(outcomes) for mode, outcomes in self.garbage.items()},
            "errors": self.errors,
        }


def status_name(status: int) -> str:
    try:
        return ScsiStatus(status).name
    except ValueError:
        return f"0x{status:02x}"


def reject_reason_name(reason: int) -> str:
    try:
        return RejectReason(reason).name
    except ValueError:
        return f"0x{reason:02x}"


def write10(lba: int, blocks: int) -> bytes:
    return encode_block_cdb(ScsiOp.WRITE_10, lba, blocks)


# --- one connection --------------------------------------------------------------------------


class RawSession:
    """One TCP connection: send bytes or PDUs, receive PDUs, every one counted in the report."""

    def __init__(self, stream: trio.SocketStream, target: HostileTarget, report: HostileReport):
        self.stream = stream
        self.target = target
        self.report = report
        self.framer = PduFramer(receiving_from="target", max_recv_data_segment_length=1 << 24)
        self.lun = lun_from_number(target.lun)
        self.params: SessionParams | None = None
        self.cmd_sn = 0
        self.max_cmd_sn = 0
        self.exp_stat_sn = 0
        self.window_grew = trio.Event()
        self._itts = itertools.count(1)
        self._send_lock = trio.Lock()

    @classmethod
    async def open(cls, target: HostileTarget, report: HostileReport) -> RawSession:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await trio.open_tcp_stream(target.host, target.port)
        report.connections += 1
        return cls(stream, target, report)

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)

    def next_itt(self) -> int:
        return next(self._itts)

    async def send_bytes(self, data: bytes | bytearray) -> None:
        try:
            async with self._send_lock:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            raise TargetClosed(str(error)) from error
        self.report.bytes_sent += len(data)

    async def send(self, pdu: Pdu) -> None:
        await self.send_bytes(encode_pdu(pdu))

    async def receive(self) -> Pdu:
        while True:
            try:
                pdu = self.framer.next_pdu()
            except IscsiProtocolError as error:
                self.report.error(f"unframeable bytes from the target: {error}")
                raise TargetClosed(str(error)) from error
            if pdu is not None:
                self._track(pdu)
                self.report.record(pdu)
                return pdu
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                raise TargetClosed(str(error)) from error
            if not data:
                raise TargetClosed("end of stream")
            self.framer.feed(data)

    def _track(self, pdu: Pdu) -> None:
        if isinstance(pdu, ScsiResponse) or (isinstance(pdu, DataIn) and pdu.status_present):
            self.exp_stat_sn = sn_add(pdu.stat_sn, 1)
        max_cmd_sn = getattr(pdu, "max_cmd_sn", None)
        if (
            max_cmd_sn is not None
            and max_cmd_sn != self.max_cmd_sn
            and sn_le(self.max_cmd_sn, max_cmd_sn)
        ):
            self.max_cmd_sn = max_cmd_sn
            self.window_grew.set()
            self.window_grew = trio.Event()

    async def login(self, proposals: LoginProposals | None = None) -> bool:
        machine = InitiatorLogin(
            INITIATOR_NAME,
            self.target.target_name,
            next(_isids) & ((1 << 48) - 1),
            proposals=proposals or LoginProposals(),
        )
        step: Any = machine.start()
        with trio.fail_after(LOGIN_TIMEOUT):
            while isinstance(step, LoginRequest):
                await self.send(step)
                response = await self.receive()
                if not isinstance(response, LoginResponse):
                    self.report.login_failures += 1
                    return False
                step = machine.receive(response)
        if not isinstance(step, LoginDone):
            self.report.login_failures += 1
            self.report.error(f"login: {step}")
            return False
        self.report.logins += 1
        self.params = step.params
        self.cmd_sn = step.exp_cmd_sn
        self.max_cmd_sn = step.max_cmd_sn
        self.exp_stat_sn = sn_add(step.stat_sn, 1)
        return True

    def command(
        self, cdb: bytes, *, read_length: int = 0, write_length: int = 0, data: bytes = b""
    ) -> ScsiCommand:
        """A SCSI Command PDU on our LUN; consumes a CmdSN."""
        command = ScsiCommand(
            final=True,
            read=read_length > 0,
            write=write_length > 0,
            lun=self.lun,
            itt=self.next_itt(),
            expected_data_transfer_length=read_length or write_length,
            cmd_sn=self.cmd_sn,
            exp_stat_sn=self.exp_stat_sn,
            cdb=cdb.ljust(16, b"\x00"),
            data=data,
        )
        self.cmd_sn = sn_add(self.cmd_sn, 1)
        self.report.commands_sent += 1
        return command

    async def capacity(self) -> tuple[int, int]:
        """(blocks, block size) by READ CAPACITY(10), past the unit attention of a new nexus."""
        with trio.fail_after(LOGIN_TIMEOUT):
            for _attempt in range(4):
                command = self.command(read_capacity10(), read_length=8)
                await self.send(command)
                data = bytearray()
                while True:
                    pdu = await self.receive()
                    if isinstance(pdu, DataIn) and pdu.itt == command.itt:
                        data += pdu.data
                        if pdu.status_present:
                            status = pdu.status
                            break
                    elif isinstance(pdu, ScsiResponse) and pdu.itt == command.itt:
                        status = pdu.status
                        break
                    elif isinstance(pdu, NopIn) and pdu.ttt != RESERVED_TAG:
                        await self.answer_ping(pdu)
                if status == ScsiStatus.GOOD and len(data) >= 8:
                    capacity = parse_read_capacity10(bytes(data))
                    return capacity.blocks, capacity.block_size
        raise TargetClosed("READ CAPACITY(10) never succeeded")

    async def answer_ping(self, ping: NopIn) -> None:
        await self.send(
            NopOut(
                immediate=True,
                lun=ping.lun,
                itt=RESERVED_TAG,
                ttt=ping.ttt,
                cmd_sn=self.cmd_sn,
                exp_stat_sn=self.exp_stat_sn,
            )
        )


# --- the attacks -----------------------------------------------------------------------------

Ready = Callable[[], None]


async def logged_in_session(
    target: HostileTarget, report: HostileReport, proposals: LoginProposals | None = None
) -> RawSession | None:
    """A new logged-in connection, or None (refused or login failed: already counted)."""
    try:
        session = await RawSession.open(target, report)
    except (OSError, trio.TooSlowError) as error:
        report.connect_failures += 1
        report.error(f"connect: {error}")
        return None
    try:
        if await session.login(proposals):
            return session
    except TargetClosed:
        report.drops += 1
    except trio.TooSlowError:
        report.error("login timed out")
    await session.close()
    return None


async def session_loop(
    target: HostileTarget,
    report: HostileReport,
    attack: Callable[[RawSession], Awaitable[None]],
    proposals: LoginProposals | None = None,
) -> None:
    """Log in and ``attack``; when the target drops the connection, do it again."""
    while True:
        session = await logged_in_session(target, report, proposals)
        if session is None:
            await trio.sleep(RETRY_PAUSE)
            continue
        try:
            await attack(session)
        # except*: attacks receive in a nursery, which wraps what ends them in a group.
        except* TargetClosed:
            report.drops += 1
        except* trio.TooSlowError as group:
            report.error(f"timed out: {group.exceptions[0]}")
        finally:
            await session.close()


async def receive_loop(session: RawSession, on_pdu: Callable[[Pdu], None]) -> None:
    """Receive (and count) until the connection ends; answer the target's pings."""
    while True:
        pdu = await session.receive()
        if isinstance(pdu, NopIn) and pdu.ttt != RESERVED_TAG:
            await session.answer_ping(pdu)
        on_pdu(pdu)


async def slot_hog(target: HostileTarget, report: HostileReport, ready: Ready) -> None:
    async def attack(session: RawSession) -> None:
        blocks, block_size = await session.capacity()
        write_blocks = max(1, HOG_WRITE_BYTES // block_size)
        held: set[int] = set()
        outstanding: set[int] = set()

        def on_pdu(pdu: Pdu) -> None:
            if isinstance(pdu, R2T) and pdu.itt in outstanding:
                held.add(pdu.itt)
                report.held_max = max(report.held_max, len(held))
            elif isinstance(pdu, ScsiResponse):
                held.discard(pdu.itt)
                outstanding.discard(pdu.itt)

        rng = random.Random(0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_loop, session, on_pdu)
            ready()
            for _ in range(HOG_MAX_COMMANDS):
                while not sn_le(session.cmd_sn, session.max_cmd_sn):
                    await session.window_grew.wait()
                lba = rng.randrange(max(1, blocks - write_blocks))
                command = session.command(
                    write10(lba, write_blocks), write_length=write_blocks * block_size
                )
                outstanding.add(command.itt)
                report.outstanding_max = max(report.outstanding_max, len(outstanding))
                await session.send(command)
            await trio.sleep_forever()

    await session_loop(target, report, attack, HOG_PROPOSALS)


async def trickle(
    target: HostileTarget, report: HostileReport, ready: Ready, interval: float
) -> None:
    async def attack(session: RawSession) -> None:
        blocks, block_size = await session.capacity()
        assert session.params is not None
        params = session.params
        size = min(
            TRICKLE_BYTES, params.first_burst_length, params.target_max_recv_data_segment_length
        )
        write_blocks = max(1, size // block_size)
        rng = random.Random(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_loop, session, lambda pdu: None)
            ready()
            while True:
                lba = rng.randrange(max(1, blocks - write_blocks))
                length = write_blocks * block_size
                wire = encode_pdu(
                    session.command(
                        write10(lba, write_blocks),
                        write_length=length,
                        data=rng.randbytes(length),
                    )
                )
                await session.send_bytes(wire[:BHS_LENGTH])
                for index in range(BHS_LENGTH, len(wire)):
                    await session.send_bytes(wire[index : index + 1])
                    report.trickled_bytes += 1
                    await trio.sleep(interval)

    await session_loop(target, report, attack)


async def nop_flood(target: HostileTarget, report: HostileReport, ready: Ready) -> None:
    async def attack(session: RawSession) -> None:
        template = encode_pdu(
            NopOut(immediate=True, lun=session.lun, ttt=RESERVED_TAG, cmd_sn=session.cmd_sn)
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_loop, session, lambda pdu: None)
            ready()
            while True:
                batch = bytearray()
                for _ in range(NOP_BATCH):
                    pdu = bytearray(template)
                    struct.pack_into(">I", pdu, 16, session.next_itt() & 0x7FFFFFFF)
                    struct.pack_into(">I", pdu, 28, session.exp_stat_sn)
                    batch += pdu
                await session.send_bytes(batch)
                report.nop_outs_sent += NOP_BATCH

    await session_loop(target, report, attack)


def undefined_opcode_pdu(rng: random.Random) -> bytes:
    """A header with an opcode no initiator PDU has, no AHS and no data segment."""
    header = bytearray(rng.randbytes(BHS_LENGTH))
    header[0] = UNDEFINED_OPCODE
    header[4:8] = bytes(4)  # TotalAHSLength, DataSegmentLength
    return bytes(header)


def oversized_segment_command(session: RawSession) -> bytes:
    """A SCSI Command whose header announces a 16 MiB data segment."""
    header = bytearray(encode_pdu(session.command(write10(0, 8), write_length=4096)))
    header[5:8] = OVERSIZED_SEGMENT.to_bytes(3, "big")
    return bytes(header[:BHS_LENGTH])


async def garbage(target: HostileTarget, report: HostileReport, ready: Ready) -> None:
    rng = random.Random(2)
    for mode in itertools.cycle(GarbageMode):
        try:
            if mode is GarbageMode.BYTES_BEFORE_LOGIN:
                session: RawSession | None = await RawSession.open(target, report)
            else:
                session = await logged_in_session(target, report)
        except (OSError, trio.TooSlowError) as error:
            report.connect_failures += 1
            report.error(f"connect: {error}")
            session = None
        if session is None:
            await trio.sleep(RETRY_PAUSE)
            continue
        ready()
        try:
            await garbage_once(session, mode, rng, report)
        finally:
            await session.close()


async def garbage_once(
    session: RawSession, mode: GarbageMode, rng: random.Random, report: HostileReport
) -> None:
    """Send one mode's garbage, then see what the target does within GARBAGE_WAIT."""
    rejected = False
    try:
        if mode in (GarbageMode.BYTES_BEFORE_LOGIN, GarbageMode.BYTES_AFTER_LOGIN):
            await session.send_bytes(rng.randbytes(GARBAGE_BYTES))
        elif mode is GarbageMode.UNDEFINED_OPCODE:
            pdus = b"".join(undefined_opcode_pdu(rng) for _ in range(GARBAGE_PDUS))
            await session.send_bytes(pdus)
        else:
            await session.send_bytes(oversized_segment_command(session))
            await session.send_bytes(rng.randbytes(GARBAGE_BYTES))
        with trio.move_on_after(GARBAGE_WAIT):
            while True:
                if isinstance(await session.receive(), Reject):
                    rejected = True
    except TargetClosed:
        report.drops += 1
        report.garbage_outcome(mode, "rejected, dropped" if rejected else "dropped")
        return
    report.garbage_outcome(mode, "rejected, kept open" if rejected else "no answer")


async def run_hostile(
    kind: HostileKind,
    target: HostileTarget,
    seconds: float,
    *,
    ready: Ready = lambda: None,
    stop: Callable[[], Awaitable[None]] | None = None,
    trickle_interval: float = TRICKLE_INTERVAL,
) -> HostileReport:
    """Attack ``target`` for ``seconds`` (or until ``stop()`` returns); what came back."""
    report = HostileReport(kind.value)
    attacks: dict[HostileKind, Callable[[], Awaitable[None]]] = {
        HostileKind.SLOT_HOG: lambda: slot_hog(target, report, ready),
        HostileKind.TRICKLE: lambda: trickle(target, report, ready, trickle_interval),
        HostileKind.NOP_FLOOD: lambda: nop_flood(target, report, ready),
        HostileKind.GARBAGE: lambda: garbage(target, report, ready),
    }
    started = time.monotonic()
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            if stop is not None:

                async def stop_then_cancel() -> None:
                    await stop()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_then_cancel)
            await attacks[kind]()
    report.seconds = time.monotonic() - started
    return report


# --- command line ----------------------------------------------------------------------------


async def stdin_closed() -> None:
    """Returns when our stdin reaches its end (the runner closed the pipe)."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    try:
        while await stream.receive_some(4096):
            pass
    finally:
        await stream.aclose()


def announce_ready() -> Ready:
    announced = False

    def ready() -> None:
        nonlocal announced
        if not announced:
            announced = True
            print("ready", flush=True)

    return ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile", description=__doc__)
    parser.add_argument("kind", choices=[kind.value for kind in HostileKind])
    parser.add_argument("url", help="iscsi://host:port/<target iqn>/<lun>")
    parser.add_argument("--seconds", type=float, default=5.0, help="the most it runs")
    parser.add_argument("--until-stdin-eof", action="store_true", help="also stop at stdin EOF")
    parser.add_argument("--trickle-interval", type=float, default=TRICKLE_INTERVAL)
    parser.add_argument(
        "--wait-for-go",
        action="store_true",
        help="print 'loaded', then start only when a line arrives on stdin (the clock starts "
        "then: the runner starts its victim in between)",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.trickle_interval < 0:
        parser.error("--seconds must be > 0 and --trickle-interval >= 0")
    try:
        target = HostileTarget.from_url(args.url)
    except UrlError as error:
        parser.error(str(error))
    if args.wait_for_go:
        print("loaded", flush=True)
        if not sys.stdin.readline():  # the runner went away before the start
            print(json.dumps(HostileReport(args.kind).as_dict()), flush=True)
            return 0
    report = trio.run(
        lambda: run_hostile(
            HostileKind(args.kind),
            target,
            args.seconds,
            ready=announce_ready(),
            stop=stdin_closed if args.until_stdin_eof else None,
            trickle_interval=args.trickle_interval,
        )
    )
    print(json.dumps(report.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
