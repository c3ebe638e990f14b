"""fio-like load generator over one BlockDevice: IOPS, MB/s and latency percentiles."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import trio

from .device import BlockDevice
from .errors import InitiatorError
from .stats import LatencyRecorder


class Pattern(StrEnum):
    RANDREAD = "randread"
    RANDWRITE = "randwrite"
    READ = "read"
    WRITE = "write"
    RANDRW = "randrw"

    @property
    def sequential(self) -> bool:
        return self in (Pattern.READ, Pattern.WRITE)


@dataclass(slots=True)
class BenchReport:
    pattern: str
    block_size: int
    queue_depth: int
    seconds: float = 0.0
    ios: int = 0
    reads: int = 0
    writes: int = 0
    bytes: int = 0
    errors: int = 0
    last_error: str = ""
    reconnects: int = 0
    longest_pause_s: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time during the run
    latency: LatencyRecorder = field(default_factory=LatencyRecorder)

    @property
    def iops(self) -> float:
        return self.ios / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "pattern": self.pattern,
            "block_size": self.block_size,
            "queue_depth": self.queue_depth,
            "seconds": self.seconds,
            "ios": self.ios,
            "reads": self.reads,
            "writes": self.writes,
            "bytes": self.bytes,
            "iops": self.iops,
            "mb_per_s": self.mb_per_s,
            "latency_us": self.latency.percentiles(),
            "errors": self.errors,
            "last_error": self.last_error,
            "reconnects": self.reconnects,
            "longest_pause_s": self.longest_pause_s,
            "cpu_us_per_io": self.cpu_seconds / self.ios * 1e6 if self.ios else 0.0,
        }


def parse_size(text: str) -> int:
    """``4k``, ``128K``, ``1m``, ``512`` -> bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    multiplier = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        value = int(number) * multiplier
    except ValueError:
        raise ValueError(f"bad size {text!r}") from None
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value


async def run_bench(
    device: BlockDevice,
    pattern: Pattern,
    *,
    block_size: int = 4096,
    queue_depth: int = 32,
    seconds: float = 10.0,
    read_fraction: float = 0.5,
    region_bytes: int | None = None,
    progress: Callable[[BenchReport, float], None] | None = None,
    seed: int | None = None,
    stop: trio.Event | None = None,
) -> BenchReport:
    """Run for ``seconds`` (0: until ``stop`` is set), ``queue_depth`` I/Os in flight."""
    if block_size % device.block_size:
        raise ValueError(f"--bs must be a multiple of the {device.block_size}-byte block size")
    blocks_per_io = block_size // device.block_size
    region_blocks = min(
        device.blocks, (region_bytes or device.capacity.size_bytes) // device.block_size
    )
    slots = region_blocks // blocks_per_io
    if slots < 1:
        raise ValueError(f"the device is smaller than one {block_size}-byte I/O")
    report = BenchReport(pattern.value, block_size, queue_depth)
    payload = os.urandom(block_size)
    rng = random.Random(seed)
    cursor = 0
    reconnects_before = device.stats.reconnects

    # Plain bools: a StrEnum comparison per I/O costs more than the rest of the choice.
    sequential = pattern.sequential
    always_read = pattern in (Pattern.RANDREAD, Pattern.READ)
    never_read = pattern in (Pattern.RANDWRITE, Pattern.WRITE)

    def next_lba() -> int:
        nonlocal cursor
        if sequential:
            slot, cursor = cursor, (cursor + 1) % slots
        else:
            slot = rng.randrange(slots)
        return slot * blocks_per_io

    def is_read() -> bool:
        if always_read:
            return True
        if never_read:
            return False
        return rng.random() < read_fraction

    started = trio.current_time()
    cpu_started = time.process_time()
    deadline = started + seconds if seconds > 0 else math.inf
    if stop is None:
        stop = trio.Event()

    # Latency by the plain perf_counter: trio's clock costs a few calls per reading.
    clock = time.perf_counter
    clock_deadline = clock() + seconds if seconds > 0 else math.inf
    latency = report.latency
    in_flight = 0
    drained = trio.Event()
    after_error: trio.MemorySendChannel[None]
    after_error, errors_to_wait = trio.open_memory_channel[None](math.inf)

    def start_io() -> None:
        """One I/O through the device's submit API, as fio's libiscsi engine runs: its
        completion records it and starts the next, in the reader, with no task switch."""
        nonlocal in_flight
        if clock() >= clock_deadline or stop.is_set():
            if in_flight == 0:
                drained.set()
            return
        in_flight += 1
        lba = next_lba()
        read = is_read()
        issued = clock()

        def done(outcome: object) -> None:
            nonlocal in_flight
            in_flight -= 1
            if isinstance(outcome, InitiatorError):
                report.errors += 1
                report.last_error = f"{type(outcome).__name__}: {outcome}"
                after_error.send_nowait(None)  # this slot starts again after a pause
                return
            latency.add(clock() - issued)
            report.ios += 1
            report.bytes += block_size
            if read:
                report.reads += 1
            else:
                report.writes += 1
            start_io()

        if read:
            device.submit_read(lba, blocks_per_io, done)
        else:
            device.submit_write(lba, payload, done)

    async def restart_after_errors() -> None:
        async for _ in errors_to_wait:
            await trio.sleep(0.05)
            start_io()

    async def deadline_or_stop() -> None:
        with trio.move_on_at(deadline):
            await stop.wait()
        if in_flight == 0:
            drained.set()

    async def reporter() -> None:
        while trio.current_time() < deadline and not stop.is_set():
            report.seconds = trio.current_time() - started
            assert progress is not None
            progress(report, min(1.0, report.seconds / seconds) if seconds > 0 else 0.0)
            await trio.sleep(0.25)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(restart_after_errors)
        nursery.start_soon(deadline_or_stop)
        if progress is not None:
            nursery.start_soon(reporter)
        for _ in range(queue_depth):
            start_io()
        await drained.wait()
        nursery.cancel_scope.cancel()
    report.seconds = trio.current_time() - started
    report.cpu_seconds = time.process_time() - cpu_started
    report.reconnects = device.stats.reconnects - reconnects_before
    report.longest_pause_s = device.stats.pauses.longest_so_far(time.monotonic())
    return report
