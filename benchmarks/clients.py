"""The three clients: fio (libiscsi engine), ``qemu-img bench`` (QEMU's iscsi driver) and the
project's initiator. Each turns a workload on one URL into a `Measurement`; fio also runs
several jobs at once (scale, fairness).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from benchmarks.workloads import Measurement, Workload
from tests.peers.fio import ensure_fio_libiscsi, fio_filename

#: Extra seconds a client may take beyond its run (login, start-up) before we give up on it.
CLIENT_SLACK_SECONDS = 60.0


class ClientError(RuntimeError):
    """A client failed or printed something we could not parse."""


class ClientKind(StrEnum):
    FIO = "fio"
    QEMU_IMG = "qemu-img"
    INITIATOR = "initiator"


def run_command(argv: Sequence[str], timeout: float) -> str:
    try:
        completed = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise ClientError(f"{' '.join(argv)} timed out after {timeout} s") from error
    if completed.returncode != 0:
        raise ClientError(
            f"{' '.join(argv)} exited with {completed.returncode}\n"
            f"stdout: {completed.stdout[-2000:]}\nstderr: {completed.stderr[-2000:]}"
        )
    return completed.stdout


# --- fio ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FioJob:
    name: str
    url: str
    workload: Workload


def fio_milliseconds(seconds: float) -> str:
    """A fio time option: fio drops the fraction of "1.5s" (and "0.5s" means no limit)."""
    return f"{max(1, round(seconds * 1000))}ms"


def fio_job_options(job: FioJob) -> list[str]:
    workload = job.workload
    options = [
        f"--name={job.name}",
        f"--filename={fio_filename(job.url)}",
        f"--rw={workload.pattern.value}",
        f"--bs={workload.block_size}",
        f"--iodepth={workload.queue_depth}",
    ]
    if workload.is_mixed:
        options.append(f"--rwmixread={workload.read_percent}")
    return options


def fio_measurement(job_report: Mapping[str, Any], runtime_divisor: int = 1) -> Measurement:
    """One job (or group) of fio's JSON report: reads and writes together, worst p99.

    A group (``--group_reporting``) reports the sum of its jobs' runtimes: pass the number of
    jobs as ``runtime_divisor`` to get the wall time they ran side by side.
    """
    ios = io_bytes = 0
    p99_values: list[float] = []
    max_values: list[float] = []
    for direction in ("read", "write"):
        stats = job_report.get(direction, {})
        ios += int(stats.get("total_ios", 0))
        io_bytes += int(stats.get("io_bytes", 0))
        clat = stats.get("clat_ns", {})
        percentiles = clat.get("percentile", {})
        if stats.get("total_ios") and "99.000000" in percentiles:
            p99_values.append(float(percentiles["99.000000"]) / 1000)
        if stats.get("total_ios") and "max" in clat:
            max_values.append(float(clat["max"]) / 1000)
    seconds = float(job_report.get("job_runtime", 0)) / 1000 / runtime_divisor
    return Measurement(
        ios,
        io_bytes,
        seconds,
        max(p99_values) if p99_values else None,
        max_latency_us=max(max_values) if max_values else None,
    )


def parse_fio_report(text: str) -> dict[str, Any]:
    """fio's JSON report; the libiscsi engine's notes may come first in the same file."""
    start = text.find("{")
    if start < 0:
        raise ClientError(f"fio wrote no JSON report:\n{text[-2000:]}")
    try:
        report: dict[str, Any] = json.loads(text[start:])
    except json.JSONDecodeError as error:
        raise ClientError(f"fio's report is not JSON:\n{text[-2000:]}") from error
    return report


@dataclass
class FioClient:
    kind: ClientKind = field(default=ClientKind.FIO, init=False)
    binary: Path | None = None

    def ensure(self) -> Path:
        if self.binary is None:
            self.binary = ensure_fio_libiscsi()
        return self.binary

    def run_jobs(
        self,
        jobs: Sequence[FioJob],
        seconds: float,
        *,
        group: bool = False,
        ramp_seconds: float = 0.0,
    ) -> dict[str, Measurement]:
        """Run the jobs at once for ``seconds``; per job name, or ``{"all": ...}`` if grouped.

        ``ramp_seconds``: run that long first without counting (fio's ramp_time).
        """
        binary = self.ensure()
        with tempfile.TemporaryDirectory(prefix="bench-fio-") as scratch:
            report_path = Path(scratch) / "fio.json"
            argv = [
                str(binary),
                "--output-format=json",
                f"--output={report_path}",
                "--ioengine=libiscsi",
                "--time_based=1",
                f"--runtime={fio_milliseconds(seconds)}",
                "--thread",
            ]
            if group:
                argv.append("--group_reporting")
            if ramp_seconds:
                argv.append(f"--ramp_time={fio_milliseconds(ramp_seconds)}")
            for job in jobs:
                argv += fio_job_options(job)
            timeout = ramp_seconds + seconds + CLIENT_SLACK_SECONDS + len(jobs)
            run_command(argv, timeout=timeout)
            report = parse_fio_report(report_path.read_text())
        job_reports = report.get("jobs", [])
        if group:  # a group's job_runtime adds up its jobs' runtimes
            return {"all": fio_measurement(job_reports[0], runtime_divisor=len(jobs))}
        return {job_report["jobname"]: fio_measurement(job_report) for job_report in job_reports}

    def measure(self, url: str, workload: Workload, seconds: float) -> Measurement | None:
        return self.run_jobs([FioJob("job", url, workload)], seconds)["job"]

    def measure_disks(self, urls: Sequence[str], workload: Workload, seconds: float) -> Measurement:
        """The workload on every URL at once (one job each): the aggregate."""
        jobs = [FioJob(f"disk{index}", url, workload) for index, url in enumerate(urls)]
        return self.run_jobs(jobs, seconds, group=True)["all"]


# --- qemu-img bench -------------------------------------------------------------------------

#: A first guess of IOPS per workload shape, to size qemu-img bench's request count (it is
#: count-based); later runs use what the previous one measured.
INITIAL_IOPS_GUESS = {1: 4000.0, 8: 8000.0, 32: 20000.0}
MINIMUM_REQUESTS = 500


def scattered_stride(disk_size: int, block_size: int) -> int:
    """An odd number of blocks, a quarter of the disk plus one: wrapping around the end, the
    requests visit every block in a scattered order (qemu-img bench has no random mode)."""
    return ((disk_size // block_size) // 4 + 1) * block_size


def parse_qemu_img_bench_seconds(output: str) -> float:
    for line in output.splitlines():
        if line.startswith("Run completed in "):
            return float(line.split()[3])
    raise ClientError(f"unexpected qemu-img bench output:\n{output}")


@dataclass
class QemuImgClient:
    disk_size: int
    kind: ClientKind = field(default=ClientKind.QEMU_IMG, init=False)
    iops_seen: dict[str, float] = field(default_factory=dict)

    def request_count(self, workload: Workload, seconds: float) -> int:
        iops = self.iops_seen.get(workload.name) or INITIAL_IOPS_GUESS.get(
            workload.queue_depth, 10000.0
        )
        return max(MINIMUM_REQUESTS, int(iops * seconds))

    def measure(self, url: str, workload: Workload, seconds: float) -> Measurement | None:
        if workload.is_mixed:
            return None  # qemu-img bench reads or writes, never both
        count = self.request_count(workload, seconds)
        if workload.pattern.sequential:  # one pass at most: wrapping around stalled it
            count = min(count, self.disk_size // workload.block_size)
        argv = ["qemu-img", "bench", "-f", "raw", "-n", "-c", str(count)]
        argv += ["-d", str(workload.queue_depth), "-s", str(workload.block_size)]
        if not workload.pattern.sequential:
            argv += ["-S", str(scattered_stride(self.disk_size, workload.block_size))]
        if workload.pattern.writes:
            argv.append("-w")
        output = run_command([*argv, url], timeout=seconds * 4 + CLIENT_SLACK_SECONDS)
        measured = Measurement(
            count, count * workload.block_size, parse_qemu_img_bench_seconds(output)
        )
        self.iops_seen[workload.name] = measured.iops
        return measured


# --- the project's initiator ----------------------------------------------------------------


def initiator_measurement(report: Mapping[str, Any]) -> Measurement:
    """`initiator.bench.BenchReport.as_dict()` as a Measurement."""
    latency = report.get("latency_us") or {}
    p99 = latency.get("p99")
    return Measurement(
        ios=int(report["ios"]),
        bytes=int(report.get("bytes") or int(report["ios"]) * int(report["block_size"])),
        seconds=float(report["seconds"]),
        p99_latency_us=float(p99) if p99 is not None else None,
        longest_pause_s=float(report.get("longest_pause_s", 0.0)),
    )


def initiator_argv(urls: Sequence[str], workload: Workload, seconds: float) -> list[str]:
    argv = [sys.executable, "-m", "benchmarks.initiator_driver", *urls]
    argv += ["--rw", workload.pattern.value, "--bs", str(workload.block_size)]
    argv += ["--qd", str(workload.queue_depth), "--seconds", str(seconds)]
    return [*argv, "--read-percent", str(workload.read_percent)]


@dataclass
class InitiatorClient:
    kind: ClientKind = field(default=ClientKind.INITIATOR, init=False)

    def measure(self, url: str, workload: Workload, seconds: float) -> Measurement | None:
        return self.measure_disks([url], workload, seconds)

    def measure_disks(self, urls: Sequence[str], workload: Workload, seconds: float) -> Measurement:
        """The workload on every URL at once, one process: the aggregate
        (`benchmarks.initiator_driver.combined`)."""
        output = run_command(
            initiator_argv(urls, workload, seconds),
            timeout=seconds + CLIENT_SLACK_SECONDS + len(urls),
        )
        report = json.loads(output)
        if report.get("errors"):
            raise ClientError(f"initiator bench saw errors: {report.get('last_error')}")
        return initiator_measurement(report)
