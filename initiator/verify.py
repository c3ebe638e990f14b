"""The data-loss detector: write self-describing blocks, read them back, report mismatches.

Every block written holds a magic, its own LBA, a generation counter, the run's id, a
filler derived from those, and a CRC32C over all of it. The verifier remembers the
generation it last wrote to each chunk and checks each read against it: a stale
generation is a lost write, a wrong LBA a misdirected one, a bad CRC a torn or corrupt
block. A write that failed (the target stayed away past the replacement timeout) may or
may not have landed, so either generation is accepted there.

It runs through ``BlockDevice``, so it rides out target failover; the report says how many
reconnects happened and the longest pause in I/O completions.
"""

from __future__ import annotations

import math
import random
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import trio

from iscsicore.digest import crc32c

from .device import BlockDevice
from .errors import InitiatorError

MAGIC = b"SGVERIFY"
_HEADER = struct.Struct(">8sQQQ")  # magic, lba, generation, run id
_CRC = struct.Struct(">I")
_MAX_REPORTED_MISMATCHES = 20
DEFAULT_CHUNK_BLOCKS = 8


def make_block(block_size: int, lba: int, generation: int, run_id: int) -> bytes:
    header = _HEADER.pack(MAGIC, lba, generation, run_id)
    filler_length = block_size - _HEADER.size - _CRC.size
    filler = (header * (filler_length // len(header) + 1))[:filler_length]
    body = header + filler
    return body + _CRC.pack(crc32c(body))


@dataclass(frozen=True, slots=True)
class BlockCheck:
    """What one block read back holds (or why it cannot be trusted)."""

    ok_crc: bool
    lba: int = -1
    generation: int = -1
    run_id: int = -1


def inspect_block(block: bytes | bytearray | memoryview) -> BlockCheck:
    view = memoryview(block)
    if _CRC.unpack_from(view, len(view) - _CRC.size)[0] != crc32c(view[: -_CRC.size]):
        return BlockCheck(ok_crc=False)
    magic, lba, generation, run_id = _HEADER.unpack_from(view)
    if magic != MAGIC:
        return BlockCheck(ok_crc=False)
    return BlockCheck(True, lba, generation, run_id)


@dataclass(slots=True)
class Mismatch:
    lba: int
    expected_generation: int
    found: str  # what the block held instead

    def __str__(self) -> str:
        return f"LBA {self.lba}: expected generation {self.expected_generation}, {self.found}"


@dataclass(slots=True)
class VerifyReport:
    seconds: float = 0.0
    writes: int = 0
    reads: int = 0
    blocks_written: int = 0
    blocks_verified: int = 0
    chunks_touched: int = 0
    final_pass_blocks: int = 0
    mismatch_count: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    errors: int = 0
    last_error: str = ""
    reconnects: int = 0
    retried_commands: int = 0
    longest_pause_s: float = 0.0
    portal: str = ""

    @property
    def ok(self) -> bool:
        return self.mismatch_count == 0 and self.errors == 0

    def add(self, other: VerifyReport) -> None:
        """Fold in another verifier's report of the same disk (another session's region)."""
        for name in ("writes", "reads", "blocks_written", "blocks_verified", "chunks_touched",
                     "final_pass_blocks", "mismatch_count", "errors", "reconnects",
                     "retried_commands"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.mismatches.extend(other.mismatches[: _MAX_REPORTED_MISMATCHES - len(self.mismatches)])
        self.last_error = other.last_error or self.last_error
        self.longest_pause_s = max(self.longest_pause_s, other.longest_pause_s)
        self.seconds = max(self.seconds, other.seconds)

    def as_dict(self) -> dict[str, object]:
        result = asdict(self)
        result["mismatches"] = [str(m) for m in self.mismatches]
        result["ok"] = self.ok
        return result


@dataclass(slots=True)
class _Chunk:
    generation: int = 0  # last generation written; 0 = never written in this run
    uncertain: bool = False  # the last write failed: generation or generation - 1
    busy: bool = False


def split_region(
    blocks: int, parts: int, chunk_blocks: int = DEFAULT_CHUNK_BLOCKS
) -> list[tuple[int, int]]:
    """(first block, blocks) of ``parts`` disjoint slices of a region of ``blocks``, each a
    whole number of chunks (at least one): one verifier per session of a disk."""
    share = max(1, blocks // parts // chunk_blocks) * chunk_blocks
    return [(index * share, share) for index in range(parts)]


class Verifier:
    def __init__(
        self,
        device: BlockDevice,
        *,
        chunk_blocks: int = DEFAULT_CHUNK_BLOCKS,
        region_blocks: int | None = None,
        first_block: int = 0,
        write_fraction: float = 0.5,
        seed: int | None = None,
    ) -> None:
        """Verify the region of ``region_blocks`` (default: the rest of the device) from
        ``first_block``: several verifiers of one disk (a session each) use disjoint ones."""
        if not 0 <= first_block < device.blocks:
            raise ValueError(f"first block {first_block} outside the device")
        self.device = device
        self.block_size = device.block_size
        self.chunk_blocks = chunk_blocks
        self.first_block = first_block
        available = device.blocks - first_block
        region = min(region_blocks or available, available)
        self.chunk_count = max(1, region // chunk_blocks)
        self.write_fraction = write_fraction
        self.rng = random.Random(seed)
        self.run_id = self.rng.getrandbits(63)
        self.chunks = [_Chunk() for _ in range(self.chunk_count)]
        self.report = VerifyReport()
        self._deadline = math.inf

    async def run(
        self,
        seconds: float,
        *,
        queue_depth: int = 16,
        progress: Callable[[VerifyReport], None] | None = None,
    ) -> VerifyReport:
        started = trio.current_time()
        self._deadline = started + seconds if seconds > 0 else math.inf
        async with trio.open_nursery() as nursery:
            for _ in range(queue_depth):
                nursery.start_soon(self._worker)
            if progress is not None:
                nursery.start_soon(self._progress, progress)
        await self._final_pass()
        self._fill_session_figures()
        self.report.seconds = trio.current_time() - started
        return self.report

    def stop(self) -> None:
        """End the workload now (after the commands in flight); the final pass still runs."""
        self._deadline = -math.inf

    async def _progress(self, progress: Callable[[VerifyReport], None]) -> None:
        while trio.current_time() < self._deadline:
            self._fill_session_figures()
            progress(self.report)
            await trio.sleep(0.25)

    def _fill_session_figures(self) -> None:
        stats = self.device.stats
        self.report.reconnects = stats.reconnects
        self.report.retried_commands = stats.retried_commands
        self.report.longest_pause_s = stats.pauses.longest_so_far(time.monotonic())
        self.report.portal = stats.portal

    def _pick_chunk(self) -> int | None:
        for _ in range(8):
            index = self.rng.randrange(self.chunk_count)
            if not self.chunks[index].busy:
                return index
        return None

    async def _worker(self) -> None:
        while trio.current_time() < self._deadline:
            index = self._pick_chunk()
            if index is None:
                await trio.sleep(0)
                continue
            chunk = self.chunks[index]
            chunk.busy = True
            try:
                if chunk.generation == 0 or self.rng.random() < self.write_fraction:
                    await self._write(index, chunk)
                else:
                    await self._read_and_check(index, chunk)
            except InitiatorError as error:
                self.report.errors += 1
                self.report.last_error = f"{type(error).__name__}: {error}"
                await trio.sleep(0.05)  # a target that is away: do not spin
            finally:
                chunk.busy = False

    async def _write(self, index: int, chunk: _Chunk) -> None:
        first_lba = self.first_block + index * self.chunk_blocks
        generation = chunk.generation + 1
        data = b"".join(
            make_block(self.block_size, first_lba + i, generation, self.run_id)
            for i in range(self.chunk_blocks)
        )
        if chunk.generation == 0:
            self.report.chunks_touched += 1
        # Until the write is acknowledged the chunk may hold either generation.
        chunk.generation, chunk.uncertain = generation, True
        try:
            await self.device.write(first_lba, data)
        except InitiatorError:
            if generation == 1:  # nothing of this run there to check, or a complete gen 1
                chunk.generation, chunk.uncertain = 0, False
            raise
        chunk.uncertain = False
        self.report.writes += 1
        self.report.blocks_written += self.chunk_blocks

    async def _read_and_check(self, index: int, chunk: _Chunk) -> int:
        first_lba = self.first_block + index * self.chunk_blocks
        data = await self.device.read(first_lba, self.chunk_blocks)
        self.report.reads += 1
        view = memoryview(data)
        size = self.block_size
        accepted = {chunk.generation, chunk.generation - 1} if chunk.uncertain else None
        seen_generation: int | None = None
        for i in range(self.chunk_blocks):
            lba = first_lba + i
            block = view[i * size : (i + 1) * size]
            check = inspect_block(block) if len(block) == size else BlockCheck(False)
            problem = self._problem(check, lba, chunk.generation, accepted)
            if problem is not None:
                self._mismatch(Mismatch(lba, chunk.generation, problem))
            elif accepted is not None:
                seen_generation = check.generation
            self.report.blocks_verified += 1
        if accepted is not None and seen_generation is not None:
            chunk.generation, chunk.uncertain = max(seen_generation, 1), False
        return self.chunk_blocks

    def _problem(
        self, check: BlockCheck, lba: int, expected: int, accepted: set[int] | None
    ) -> str | None:
        if not check.ok_crc:
            return "found a block with a bad CRC or no verify header (torn, lost or foreign)"
        if check.run_id != self.run_id:
            return "found a block from another run (write lost)"
        if check.lba != lba:
            return f"found the block of LBA {check.lba} (misdirected write)"
        if accepted is not None:
            return None if check.generation in accepted else f"found generation {check.generation}"
        if check.generation != expected:
            return f"found generation {check.generation} (stale: a write was lost)"
        return None

    def _mismatch(self, mismatch: Mismatch) -> None:
        self.report.mismatch_count += 1
        if len(self.report.mismatches) < _MAX_REPORTED_MISMATCHES:
            self.report.mismatches.append(mismatch)

    async def _final_pass(self) -> None:
        """Read back every chunk written in this run."""
        written = [i for i, chunk in enumerate(self.chunks) if chunk.generation > 0]
        limiter = trio.CapacityLimiter(16)

        async def check(index: int) -> None:
            async with limiter:
                chunk = self.chunks[index]
                try:
                    self.report.final_pass_blocks += await self._read_and_check(index, chunk)
                except InitiatorError as error:
                    self.report.errors += 1
                    self.report.last_error = f"{type(error).__name__}: {error}"

        async with trio.open_nursery() as nursery:
            for index in written:
                nursery.start_soon(check, index)
