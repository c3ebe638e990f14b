"""The clients: the project's initiator and QEMU's (qemu-io), writing unique values.

Each client owns its vDisks and a set of blocks on each; it reads and writes them at
random, one command per block at a time, through its node's redirector, and records every
operation in the history. A write that errs is ``info`` (it may have landed), a read that
errs is ``fail`` (it changed nothing). Writes carry `blocks.encode` sectors, reads are
decoded with `blocks.decode`, so the checker can attribute every read to one write.
"""

from __future__ import annotations

import random
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from cluster.jepsen.blocks import SECTOR, Value, decode, encode
from cluster.jepsen.history import EventType, Function, History, Key
from initiator.device import BlockDevice
from initiator.errors import InitiatorError
from initiator.session import SessionConfig
from initiator.vm import VM, vdisk_target

# Like the demo's guest: a hung CVM is noticed in a few seconds.
SESSION = SessionConfig(nop_interval=1.0, nop_timeout=3.0, replacement_timeout=120.0)
WRITE_FRACTION = 0.5
QEMU_IO_OP_TIMEOUT = 90.0  # then the qemu-io process is killed and the operation is info
QEMU_IO_START_TIMEOUT = 30.0
FINAL_READ_BLOCKS = 64  # sectors per command of the final read-back


@dataclass(frozen=True, slots=True)
class ClientPlan:
    client_id: int  # > 0: part of every value the client writes
    kind: str  # "initiator" or "qemu-io"
    portal: str  # its node's redirector, host:port
    vdisks: tuple[str, ...]
    blocks: int  # LBAs 0 .. blocks-1 of each vDisk
    seed: int
    concurrency: int = 2  # commands in flight per vDisk session (the initiator's)
    sessions_per_disk: int = 1  # the initiator's sessions per vDisk (AHV Turbo: 2)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.client_id}"

    def registers(self) -> list[Key]:
        return [Key(vdisk, lba) for vdisk in self.vdisks for lba in range(self.blocks)]


@dataclass(slots=True)
class ClientOutcome:
    name: str
    longest_pause: float = 0.0
    error: str = ""
    operations: int = 0


@dataclass(slots=True)
class _Registers:
    """The client's own blocks: which are busy, and its write counter."""

    plan: ClientPlan
    rng: random.Random
    busy: set[Key] = field(default_factory=set)
    seq: int = 0

    def pick(self, vdisk: str) -> Key | None:
        for _ in range(8):
            key = Key(vdisk, self.rng.randrange(self.plan.blocks))
            if key not in self.busy:
                return key
        return None

    def next_value(self) -> Value:
        self.seq += 1
        return Value(self.plan.client_id, self.seq)


async def run_initiator_client(
    plan: ClientPlan, history: History, stop: trio.Event, outcome: ClientOutcome
) -> None:
    """The project's initiator: ``sessions_per_disk`` sessions per vDisk (a VM),
    ``concurrency`` workers on each; the registers keep two workers off one block."""
    registers = _Registers(plan, random.Random(plan.seed))
    async with VM(plan.portal, name=plan.name, config=SESSION) as vm:
        sessions: dict[str, list[BlockDevice]] = {}
        for vdisk in plan.vdisks:
            await vm.attach(vdisk, sessions=plan.sessions_per_disk)
            sessions[vdisk] = vm.sessions(vdisk)

        async def worker(vdisk: str, device: BlockDevice) -> None:
            while not stop.is_set():
                key = registers.pick(vdisk)
                if key is None:
                    await trio.sleep(0.001)
                    continue
                registers.busy.add(key)
                try:
                    if registers.rng.random() < WRITE_FRACTION:
                        await _initiator_write(device, key, registers.next_value(), plan, history)
                    else:
                        await _initiator_read(device, key, plan, history)
                    outcome.operations += 1
                finally:
                    registers.busy.discard(key)

        try:
            async with trio.open_nursery() as nursery:
                for vdisk, devices in sessions.items():
                    for device in devices:
                        for _ in range(plan.concurrency):
                            nursery.start_soon(worker, vdisk, device)
        finally:
            now = time.monotonic()
            every_session = [device for devices in sessions.values() for device in devices]
            pauses = [d.stats.pauses.longest_so_far(now) for d in every_session]
            outcome.longest_pause = max(pauses, default=0.0)


async def _initiator_write(
    device: BlockDevice, key: Key, value: Value, plan: ClientPlan, history: History
) -> None:
    op = history.invoke(plan.name, Function.WRITE, key, value)
    try:
        await device.write(key.lba, encode(key.vdisk, key.lba, value))
    except InitiatorError as error:
        history.complete(op, EventType.INFO, detail=f"{type(error).__name__}: {error}")
        await trio.sleep(0.05)
    else:
        history.complete(op, EventType.OK)


async def _initiator_read(
    device: BlockDevice, key: Key, plan: ClientPlan, history: History
) -> None:
    op = history.invoke(plan.name, Function.READ, key)
    try:
        data = await device.read(key.lba, 1)
    except InitiatorError as error:
        history.complete(op, EventType.FAIL, detail=f"{type(error).__name__}: {error}")
        await trio.sleep(0.05)
        return
    read = decode(key.vdisk, key.lba, data)
    history.complete(op, EventType.OK, value=read.value, decoded=read.decoded, detail=read.detail)


# -- qemu-io ------------------------------------------------------------------------------

_PROMPT = b"qemu-io> "
# "00000200:  41 42 ... 48  ABCDEFGH...": the offset, two spaces, up to 16 bytes in hex.
_HEX_LINE = re.compile(rb"^[0-9a-f]{8}: ((?: [0-9a-f]{2}){1,16})", re.MULTILINE)


class QemuIoError(Exception):
    """qemu-io did not answer in time, or exited."""


class QemuIo:
    """One interactive qemu-io on one iscsi:// URL: a command in, its output until the
    next prompt out."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.process: trio.Process | None = None
        self._buffer = b""

    async def start(self) -> None:
        """Start qemu-io and wait for its first prompt (it has logged in by then)."""
        self.process = await trio.lowlevel.open_process(
            ["qemu-io", "-f", "raw", self.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        with trio.fail_after(QEMU_IO_START_TIMEOUT):
            await self._until_prompt()

    async def command(self, line: str) -> bytes:
        if self.process is None:  # closed after a failure: a fresh qemu-io logs in again
            await self.start()
        assert self.process is not None and self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")
        return await self._until_prompt()

    async def _until_prompt(self) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        while not self._buffer.endswith(_PROMPT):
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                raise QemuIoError(f"qemu-io exited: {self._buffer[-500:].decode(errors='replace')}")
            self._buffer += chunk
        output, self._buffer = self._buffer[: -len(_PROMPT)], b""
        return output

    async def close(self) -> None:
        """Stop it by its pid (killed: it may be stuck on a dead target)."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()
        self._buffer = b""


def iscsi_url(portal: str, vdisk: str) -> str:
    return f"iscsi://{portal}/{vdisk_target(vdisk)}/0"


async def run_qemu_io_client(
    plan: ClientPlan, history: History, stop: trio.Event, outcome: ClientOutcome
) -> None:
    """QEMU's iscsi driver: one qemu-io per vDisk, one command at a time each."""
    registers = _Registers(plan, random.Random(plan.seed))
    with tempfile.TemporaryDirectory(prefix="jepsen-qemu-") as scratch:

        async def drive(vdisk: str) -> None:
            pattern = Path(scratch) / f"{vdisk}.sector"
            qemu = QemuIo(iscsi_url(plan.portal, vdisk))
            try:
                await qemu.start()
                while not stop.is_set():
                    key = registers.pick(vdisk)
                    if key is None:
                        await trio.sleep(0.001)
                        continue
                    if registers.rng.random() < WRITE_FRACTION:
                        value = registers.next_value()
                        pattern.write_bytes(encode(vdisk, key.lba, value))
                        await _qemu_write(qemu, key, value, pattern, plan, history)
                    else:
                        await _qemu_read(qemu, key, plan, history)
                    outcome.operations += 1
            finally:
                await qemu.close()

        async with trio.open_nursery() as nursery:
            for vdisk in plan.vdisks:
                nursery.start_soon(drive, vdisk)


async def _qemu_write(
    qemu: QemuIo, key: Key, value: Value, pattern: Path, plan: ClientPlan, history: History
) -> None:
    op = history.invoke(plan.name, Function.WRITE, key, value)
    output = await _qemu_command(qemu, f"write -s {pattern} {key.lba * SECTOR} {SECTOR}")
    if output is not None and b"wrote 512/512" in output:
        history.complete(op, EventType.OK)
    else:
        history.complete(op, EventType.INFO, detail=_detail(output))


async def _qemu_read(qemu: QemuIo, key: Key, plan: ClientPlan, history: History) -> None:
    op = history.invoke(plan.name, Function.READ, key)
    output = await _qemu_command(qemu, f"read -v {key.lba * SECTOR} {SECTOR}")
    if output is None or b"read 512/512" not in output:
        history.complete(op, EventType.FAIL, detail=_detail(output))
        return
    data = b"".join(bytes.fromhex(m.decode()) for m in _HEX_LINE.findall(output))
    read = decode(key.vdisk, key.lba, data)
    history.complete(op, EventType.OK, value=read.value, decoded=read.decoded, detail=read.detail)


async def _qemu_command(qemu: QemuIo, line: str) -> bytes | None:
    """The command's output; None when qemu-io hung or died (closed: the next command
    starts a fresh one)."""
    try:
        with trio.fail_after(QEMU_IO_OP_TIMEOUT):
            return await qemu.command(line)
    except (trio.TooSlowError, QemuIoError, trio.BrokenResourceError, OSError):
        await qemu.close()
        return None


def _detail(output: bytes | None) -> str:
    if output is None:
        return "qemu-io hung or exited: restarted"
    return output.decode(errors="replace").strip()[-200:]


# -- the final read-back ------------------------------------------------------------------


async def final_read(portal: str, keys: list[Key], history: History) -> str:
    """Read back every block once everything healed (a fresh session per vDisk); returns an
    error, or ""."""
    by_vdisk: dict[str, list[int]] = {}
    for key in keys:
        by_vdisk.setdefault(key.vdisk, []).append(key.lba)
    try:
        async with VM(portal, name="final-read", config=SESSION) as vm:
            for vdisk, lbas in sorted(by_vdisk.items()):
                device = await vm.attach(vdisk)
                lbas.sort()
                for first in range(0, len(lbas), FINAL_READ_BLOCKS):
                    chunk = lbas[first : first + FINAL_READ_BLOCKS]
                    await _final_chunk(device, vdisk, chunk, history)
                await vm.detach(vdisk)
    except InitiatorError as error:
        return f"final read-back failed: {type(error).__name__}: {error}"
    return ""


async def _final_chunk(device: BlockDevice, vdisk: str, lbas: list[int], history: History) -> None:
    """One command over a run of consecutive LBAs, recorded as one read per block."""
    ops = [history.invoke("final", Function.READ, Key(vdisk, lba)) for lba in lbas]
    data = await device.read(lbas[0], lbas[-1] - lbas[0] + 1)
    for op, lba in zip(ops, lbas, strict=True):
        offset = (lba - lbas[0]) * SECTOR
        read = decode(vdisk, lba, data[offset : offset + SECTOR])
        history.complete(op, EventType.OK, value=read.value, decoded=read.decoded,
                         detail=read.detail)  # fmt: skip
