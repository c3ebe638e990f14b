"""Drivers: how the kit makes an initiator log in to a portal and do a little I/O.

A driver's exit status is recorded, never judged: the verdicts come from what the target
saw. Each driver says whether it can be given CHAP secrets (one-way, mutual); a CHAP test
the driver cannot take part in is not applicable.
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import quote

import trio

from cluster.conformance.workloads import (
    FIO_ENV,
    FIO_STOP_SIGNAL,
    STOP_SIGNAL,
    WorkloadJob,
    WorkloadRun,
    command_argv,
    fio_argv,
    fio_binary,
    fio_run,
    process_workload,
    project_workload,
    qemu_io_commands,
    qemu_io_run,
)
from initiator.device import BlockDevice
from initiator.errors import InitiatorError
from initiator.login_flow import LoginOptions
from initiator.session import SessionConfig
from initiator.url import ChapCredentials, IscsiUrl
from iscsicore.chap import ChapSecrets
from iscsicore.portal import Portal

OUTPUT_TAIL = 2000  # characters of a tool's output kept as evidence
IO_BYTES = 65536  # what the writing drivers write and read back at LBA 0
REPLACEMENT_TIMEOUT = 6.0  # the project's initiator gives up a lost session after this


@dataclass(frozen=True, slots=True)
class DriverJob:
    portal: Portal
    target: str
    lun: int = 0
    chap: ChapSecrets | None = None
    mutual: ChapSecrets | None = None  # what the target proves itself with


@dataclass(frozen=True, slots=True)
class DriverRun:
    """What the driver itself reported (informative only)."""

    exit_status: int | None  # None: cut off at the test's deadline
    output: str
    seconds: float


class Driver(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def chap(self) -> bool:
        """It can be given one-way CHAP secrets."""

    @property
    def mutual_chap(self) -> bool:
        """It can be given the target's secrets for mutual CHAP too."""

    def unavailable(self) -> str | None:
        """Why the driver cannot run here (a missing tool), or None."""

    async def run(self, job: DriverJob, deadline: float) -> DriverRun: ...


@runtime_checkable
class RoutedDriver(Protocol):
    """A driver whose initiator reaches the kit through relays of its own (a VM's network):
    each test's listeners are routed to it, and the kit names the initiator's side of
    them in its redirects. It holds resources (a booted VM) from `start`, before the first
    test, until `close`, after the last."""

    async def start(self) -> None: ...

    def route(self, portals: Mapping[str, Portal]) -> dict[str, Portal]: ...

    async def close(self) -> None: ...


def _secret(secrets: ChapSecrets) -> str:
    return secrets.secret.decode()


def libiscsi_url(job: DriverJob) -> str:
    auth = ""
    if job.chap is not None:
        auth = f"{quote(job.chap.username, safe='')}%{quote(_secret(job.chap), safe='')}@"
    return f"iscsi://{auth}{job.portal.host_port}/{job.target}/{job.lun}"


async def run_tools(
    commands: list[list[str]], deadline: float, env: dict[str, str] | None = None
) -> DriverRun:
    """Run ``commands`` one after the other until one fails or ``deadline`` (trio clock)."""
    started = time.monotonic()
    output: list[str] = []
    status: int | None = None
    with trio.move_on_at(deadline):
        for argv in commands:
            try:
                done = await trio.run_process(
                    argv, capture_stdout=True, capture_stderr=True, check=False, env=env
                )
            except OSError as error:  # not executable after all: recorded, like any exit
                output.append(f"$ {shlex.join(argv)}\n{error}\n")
                status = 127
                break
            output.append(f"$ {shlex.join(argv)}\n{done.stdout.decode(errors='replace')}")
            output.append(done.stderr.decode(errors="replace"))
            status = done.returncode
            if status != 0:
                break
        else:
            status = 0
    if status is None:
        output.append("(cut off at the test's deadline)")
    return DriverRun(status, "".join(output)[-OUTPUT_TAIL:], time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class ProjectDriver:
    """The project's initiator library: log in offering CRC32C digests, INQUIRY, write
    64 KiB, read it back."""

    name: str = "project"
    chap: bool = True
    mutual_chap: bool = True

    def unavailable(self) -> str | None:
        return None

    async def run(self, job: DriverJob, deadline: float) -> DriverRun:
        started = time.monotonic()
        credentials = None
        if job.chap is not None:
            mutual = job.mutual
            credentials = ChapCredentials(
                job.chap.username,
                _secret(job.chap),
                mutual.username if mutual else None,
                _secret(mutual) if mutual else None,
            )
        url = IscsiUrl(job.portal, job.target, job.lun, credentials)
        # Offers CRC32C digests (then None), so the kit sees them in use.
        login = LoginOptions(header_digest=True, data_digest=True)
        # Longer than the kit's Time2Wait, so that a dropped session comes back.
        config = SessionConfig(login=login, nop_interval=0, replacement_timeout=REPLACEMENT_TIMEOUT)
        status: int | None = None
        output = ""
        with trio.move_on_at(deadline):
            try:
                async with BlockDevice.open(url, config) as device:
                    await device.inquiry()
                    pattern = bytes(range(256)) * (IO_BYTES // 256)
                    await device.write(0, pattern)
                    back = await device.read(0, IO_BYTES // device.block_size)
                    status = 0 if back == pattern else 1
                    output = "read back what it wrote" if status == 0 else "read-back mismatch"
            except InitiatorError as error:
                status, output = 1, f"{type(error).__name__}: {error}"
        return DriverRun(status, output, time.monotonic() - started)

    def workload_unavailable(self) -> str | None:
        return None

    async def run_workload(self, job: WorkloadJob, deadline: float) -> WorkloadRun:
        return await project_workload(job, deadline)


@dataclass(frozen=True, slots=True)
class LibiscsiDriver:
    """libiscsi's tools (libiscsi-bin): iscsi-inq, then iscsi-readcapacity16. They only
    read; mutual CHAP through LIBISCSI_CHAP_TARGET_USERNAME/PASSWORD."""

    name: str = "libiscsi"
    chap: bool = True
    mutual_chap: bool = True

    def unavailable(self) -> str | None:
        missing = [tool for tool in ("iscsi-inq", "iscsi-readcapacity16") if not shutil.which(tool)]
        return (
            f"{', '.join(missing)} not installed (apt-get install libiscsi-bin)"
            if missing
            else None
        )

    async def run(self, job: DriverJob, deadline: float) -> DriverRun:
        url = libiscsi_url(job)
        env = None
        if job.mutual is not None:
            env = os.environ | {
                "LIBISCSI_CHAP_TARGET_USERNAME": job.mutual.username,
                "LIBISCSI_CHAP_TARGET_PASSWORD": _secret(job.mutual),
            }
        commands = [["iscsi-inq", url], ["iscsi-readcapacity16", url]]
        return await run_tools(commands, deadline, env)

    def workload_unavailable(self) -> str | None:
        if fio_binary() is None:
            return (
                "no fio with the libiscsi engine (Debian's has none): the first test run "
                f"that needs it builds one, or set {FIO_ENV}"
            )
        return None

    async def run_workload(self, job: WorkloadJob, deadline: float) -> WorkloadRun:
        """fio's libiscsi engine: write the region, read it back verifying, loop."""
        binary = fio_binary()
        assert binary is not None
        url = libiscsi_url(DriverJob(job.portal, job.target, job.lun))
        report = Path("fio.json")  # in the run's scratch directory
        finished, scratch = await process_workload(
            fio_argv(binary, url, report), job, deadline, FIO_STOP_SIGNAL
        )
        try:
            text = (scratch / report).read_text() if (scratch / report).exists() else ""
            return fio_run(text, finished)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class QemuDriver:
    """QEMU's iscsi block driver (qemu-io): write 64 KiB with a pattern, read it back.
    One-way CHAP through the URL; QEMU has no mutual CHAP."""

    name: str = "qemu"
    chap: bool = True
    mutual_chap: bool = False

    def unavailable(self) -> str | None:
        return (
            None
            if shutil.which("qemu-io")
            else "qemu-io not installed (apt-get install qemu-utils)"
        )

    async def run(self, job: DriverJob, deadline: float) -> DriverRun:
        argv = [
            "qemu-io",
            "-f",
            "raw",
            "-c",
            f"write -P 0x5a 0 {IO_BYTES}",
            "-c",
            f"read -P 0x5a 0 {IO_BYTES}",
            libiscsi_url(job),
        ]
        return await run_tools([argv], deadline)

    def workload_unavailable(self) -> str | None:
        return self.unavailable()

    async def run_workload(self, job: WorkloadJob, deadline: float) -> WorkloadRun:
        """qemu-io: write each chunk with its pattern and read it back (``read -P``),
        pass after pass, until stopped."""
        url = libiscsi_url(DriverJob(job.portal, job.target, job.lun))
        argv = ["qemu-io", "-f", "raw", *qemu_io_commands(), url]
        finished, scratch = await process_workload(argv, job, deadline, STOP_SIGNAL)
        shutil.rmtree(scratch, ignore_errors=True)
        return qemu_io_run(finished.output, finished)


@dataclass(frozen=True, slots=True)
class CommandDriver:
    """A user's command line with {portal} {host} {port} {target} {lun} placeholders, and
    {user} {secret} (one-way CHAP) and {target_user} {target_secret} (mutual) if it can."""

    template: str
    name: str = "command"

    @property
    def chap(self) -> bool:
        return "{user}" in self.template and "{secret}" in self.template

    @property
    def mutual_chap(self) -> bool:
        return "{target_user}" in self.template and "{target_secret}" in self.template

    def unavailable(self) -> str | None:
        try:
            words = shlex.split(self.template)
        except ValueError as error:
            return f"--command does not parse: {error}"
        if not words:
            return "--command is empty"
        if "{" not in words[0] and shutil.which(words[0]) is None:
            return f"--command: {words[0]} is not an executable"
        return None

    async def run(self, job: DriverJob, deadline: float) -> DriverRun:
        values = {
            "portal": job.portal.host_port,
            "host": job.portal.host,
            "port": str(job.portal.port),
            "target": job.target,
            "lun": str(job.lun),
            "user": job.chap.username if job.chap else "",
            "secret": _secret(job.chap) if job.chap else "",
            "target_user": job.mutual.username if job.mutual else "",
            "target_secret": _secret(job.mutual) if job.mutual else "",
        }
        argv = [word.format(**values) for word in shlex.split(self.template)]
        return await run_tools([argv], deadline)

    def workload_unavailable(self) -> str | None:
        return self.unavailable()

    async def run_workload(self, job: WorkloadJob, deadline: float) -> WorkloadRun:
        """The template once, stopped (SIGTERM) when the scenario is over. What it writes
        is its own: the kit cannot check the data, only the path and the pause."""
        url = libiscsi_url(DriverJob(job.portal, job.target, job.lun))
        argv = command_argv(self.template, job, url)
        finished, scratch = await process_workload(argv, job, deadline, STOP_SIGNAL)
        shutil.rmtree(scratch, ignore_errors=True)
        return WorkloadRun(
            finished.status, finished.output[-OUTPUT_TAIL:], finished.seconds, None, None
        )
