"""Workloads for the failover suite: each driver writes a small region chunk by chunk with
a known byte pattern and reads it back, over and over, until the kit says stop.

Every pass writes the same patterns, so whatever a failover leaves on the vDisk can be
checked afterwards against what the driver says was acknowledged (`WorkloadRun.written`).
The driver also reports its slowest I/O: the pause its user saw. Neither its exit status
nor its own verification decides a verdict; the kit reads the vDisk back at the target.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import trio

from initiator.device import BlockDevice
from initiator.errors import InitiatorError
from initiator.session import SessionConfig
from initiator.url import IscsiUrl
from iscsicore.portal import Portal

CHUNK_BYTES = 65536
CHUNKS = 8
PASS_PAUSE = 0.1  # seconds between passes
# qemu-io runs a fixed command list: passes enough to outlast any scenario (it is stopped).
QEMU_PASSES = 600
OUTPUT_TAIL = 3000
# Like QEMU's driver, but quicker to notice a stopped CVM (libiscsi's defaults are 5 s x 3).
PROJECT_SESSION = SessionConfig(nop_interval=1.0, nop_timeout=2.0, replacement_timeout=90.0)
FIO_PATTERN = 0x5A
FIO_ENV = "STARGATE_FIO"  # a fio built with the libiscsi engine, if not the cached one
FIO_CACHED = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / (
    "stargate-emu/fio-libiscsi/fio"
)


def chunk_pattern(chunk: int) -> int:
    return 0x11 + chunk


@dataclass(frozen=True, slots=True)
class WorkloadJob:
    portal: Portal
    target: str
    stop: trio.Event  # set by the kit when the scenario is over
    lun: int = 0


@dataclass(frozen=True, slots=True)
class WorkloadRun:
    exit_status: int | None  # None: stopped by a signal or cut off
    output: str
    seconds: float
    # chunk -> the byte pattern of an acknowledged write there; None: the driver cannot say
    written: dict[int, int] | None
    longest_io: float | None  # its slowest I/O in seconds: the pause its user saw
    ios: int = 0
    errors: list[str] = field(default_factory=list)  # what the driver itself reported


@runtime_checkable
class WorkloadDriver(Protocol):
    @property
    def name(self) -> str: ...

    def workload_unavailable(self) -> str | None:
        """Why the driver cannot run the failover workload here, or None."""

    async def run_workload(self, job: WorkloadJob, deadline: float) -> WorkloadRun: ...


async def project_workload(job: WorkloadJob, deadline: float) -> WorkloadRun:
    """The project's initiator: one session riding through the failures."""
    started = time.monotonic()
    written: dict[int, int] = {}
    longest, ios = 0.0, 0
    errors: list[str] = []
    status: int | None = None
    url = IscsiUrl(job.portal, job.target, job.lun)
    with trio.move_on_at(deadline):
        try:
            async with BlockDevice.open(url, PROJECT_SESSION) as device:
                blocks = CHUNK_BYTES // device.block_size
                while not job.stop.is_set():
                    for chunk in range(CHUNKS):
                        data = bytes([chunk_pattern(chunk)]) * CHUNK_BYTES
                        began = trio.current_time()
                        await device.write(chunk * blocks, data)
                        written[chunk] = chunk_pattern(chunk)
                        middle = trio.current_time()
                        back = await device.read(chunk * blocks, blocks)
                        longest = max(longest, middle - began, trio.current_time() - middle)
                        ios += 2
                        if back != data:
                            errors.append(f"chunk {chunk} read back other data")
                    await trio.sleep(PASS_PAUSE)
            status = 1 if errors else 0
        except InitiatorError as error:
            status = 1
            errors.append(f"{type(error).__name__}: {error}")
    output = f"{ios} I/Os, slowest {longest:.3f} s"
    return WorkloadRun(status, output, time.monotonic() - started, written, longest, ios, errors)


@dataclass(frozen=True, slots=True)
class Finished:
    status: int | None
    output: str
    seconds: float


async def run_until_stopped(
    argv: list[str], stop: trio.Event, deadline: float, scratch: Path, stop_signal: int
) -> Finished:
    """Run ``argv`` in ``scratch`` until it exits, ``stop`` is set (then ``stop_signal``,
    and SIGKILL if it has not exited 5 s later) or ``deadline``; its output goes to a file
    so that nothing is lost when it is stopped."""
    started = time.monotonic()
    out_path = scratch / "output.txt"
    with out_path.open("wb") as out:
        process = await trio.lowlevel.open_process(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=scratch
        )
        try:
            with trio.move_on_at(deadline):
                async with trio.open_nursery() as nursery:

                    async def stopper() -> None:
                        await stop.wait()
                        process.send_signal(stop_signal)
                        await trio.sleep(5)
                        process.kill()

                    nursery.start_soon(stopper)
                    await process.wait()
                    nursery.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    status = process.returncode if stop.is_set() is False or process.returncode == 0 else None
    text = out_path.read_text(errors="replace")
    return Finished(status, text, time.monotonic() - started)


_QEMU_WROTE = re.compile(r"^wrote \d+/\d+ bytes at offset (\d+)$", re.M)
# "64 KiB, 1 ops; 00.01 sec (...)", or "0:00:03.20 (...)" from a second on: one command's time.
_QEMU_TIME = re.compile(r"ops; (?:(\d+):(\d+):)?(\d+\.\d+)")


def qemu_io_commands() -> list[str]:
    commands: list[str] = []
    for _ in range(QEMU_PASSES):
        for chunk in range(CHUNKS):
            pattern, offset = chunk_pattern(chunk), chunk * CHUNK_BYTES
            commands += [
                "-c",
                f"write -P {pattern} {offset} {CHUNK_BYTES}",
                "-c",
                f"read -P {pattern} {offset} {CHUNK_BYTES}",
            ]
        commands += ["-c", f"sleep {int(PASS_PAUSE * 1000)}"]
    return commands


def qemu_io_run(output: str, finished: Finished) -> WorkloadRun:
    written = {
        int(offset) // CHUNK_BYTES: chunk_pattern(int(offset) // CHUNK_BYTES)
        for offset in _QEMU_WROTE.findall(output)
    }
    times = [
        int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)
        for hours, minutes, seconds in _QEMU_TIME.findall(output)
    ]
    errors = [line for line in output.splitlines() if "failed" in line.lower()][:5]
    return WorkloadRun(
        finished.status,
        output[-OUTPUT_TAIL:],
        finished.seconds,
        written,
        max(times) if times else None,
        len(times),
        errors,
    )


def fio_binary() -> Path | None:
    configured = os.environ.get(FIO_ENV)
    binary = Path(configured) if configured else FIO_CACHED
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def fio_argv(binary: Path, url: str, report: Path) -> list[str]:
    """One job, queue depth 1: write the region with a pattern, read it back and verify,
    loop after loop until stopped (fio prints its report on SIGINT)."""
    return [
        str(binary),
        "--output-format=json",
        f"--output={report}",
        "--name=failover",
        "--ioengine=libiscsi",
        f"--filename={url.replace(':', chr(92) + ':')}",
        "--rw=write",
        f"--bs={CHUNK_BYTES}",
        f"--size={CHUNK_BYTES * CHUNKS}",
        "--iodepth=1",
        "--loops=1000000",
        "--verify=pattern",
        f"--verify_pattern=0x{FIO_PATTERN:02x}",
        "--do_verify=1",
        "--verify_fatal=1",
    ]


def fio_run(report_text: str, finished: Finished) -> WorkloadRun:
    try:
        jobs = json.loads(report_text[report_text.index("{") :]).get("jobs", [])
    except ValueError:
        jobs = []
    if not jobs:
        return WorkloadRun(
            finished.status, finished.output[-OUTPUT_TAIL:], finished.seconds, {}, None
        )
    job = jobs[0]
    written_bytes = int(job["write"]["io_bytes"])
    chunks = min(CHUNKS, written_bytes // CHUNK_BYTES)
    longest = max(int(job[way]["clat_ns"]["max"]) for way in ("read", "write")) / 1e9
    ios = int(job["read"]["total_ios"]) + int(job["write"]["total_ios"])
    said = [line.strip() for line in finished.output.splitlines() if "error" in line.lower()]
    errors = said[:3] + ([f"fio error {job['error']}"] if job.get("error") else [])
    return WorkloadRun(
        finished.status,
        finished.output[-OUTPUT_TAIL:],
        finished.seconds,
        dict.fromkeys(range(chunks), FIO_PATTERN),
        longest,
        ios,
        errors,
    )


async def process_workload(
    argv: list[str], job: WorkloadJob, deadline: float, stop_signal: int
) -> tuple[Finished, Path]:
    scratch = Path(tempfile.mkdtemp(prefix="stargate-conformance-"))
    return await run_until_stopped(argv, job.stop, deadline, scratch, stop_signal), scratch


def command_argv(template: str, job: WorkloadJob, url: str) -> list[str]:
    values = {
        "portal": job.portal.host_port,
        "host": job.portal.host,
        "port": str(job.portal.port),
        "target": job.target,
        "lun": str(job.lun),
        "url": url,
        # no CHAP in the failover suite
        **dict.fromkeys(("user", "secret", "target_user", "target_secret"), ""),
    }
    return [word.format(**values) for word in shlex.split(template)]


STOP_SIGNAL = signal.SIGTERM
FIO_STOP_SIGNAL = signal.SIGINT
