"""Isolation: a victim vDisk's p99 while a hostile session attacks another vDisk of the target.

For each hostile kind (`benchmarks.hostile`: slot hog, trickle, NOP flood, garbage) the
victim, fio 4 KiB randread QD 1 on vDisk B (LUN 2 of tgtd), runs beside the hostile client
on vDisk A (LUN 1), and once alone. Timeline of a run:

- the hostile client's process starts and loads (it has not connected yet);
- fio starts; once its connection to the target shows in /proc/net/tcp it is logged in or
  about to be, and it ramps up for RAMP_SECONDS (not counted);
- after the ramp and START_MARGIN_SECONDS, the hostile client connects and attacks, until
  fio has run its ``seconds``. An I/O the attack holds past that completes when the hostile
  client gives up (HOSTILE_GRACE_SECONDS later) and counts, with its whole latency.

The hostile client never starts before the ramp ends: fio resets its figures at the end of
the ramp, and an I/O stalled across it would vanish from them. Meanwhile the target's RSS is
sampled; the hostile client reports what it got back.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from benchmarks.clients import ClientError, FioClient, FioJob
from benchmarks.cpu import CpuMeter, cpu_seconds
from benchmarks.hostile import HostileKind, HostileTarget
from benchmarks.settings import Settings
from benchmarks.standard import alternating, median_or_none, ratio
from benchmarks.targets import (
    BenchTarget,
    StargateServer,
    TargetKind,
    TgtdServer,
    stargate_executable,
)
from benchmarks.workloads import KiB, Pattern, Workload

Log = Callable[[str], None]
VICTIM = Workload("randread-4k-qd1", Pattern.RANDREAD, 4 * KiB, 1)
HOSTILE_DISK = 0
VICTIM_DISK = 1
RAMP_SECONDS = 0.5
START_MARGIN_SECONDS = 0.2
VICTIM_CONNECT_TIMEOUT_SECONDS = 30.0
TCP_ESTABLISHED = "01"
#: A victim I/O slower than this beside a hostile session was held by it: fio at QD 1 sends
#: nothing else meanwhile, so p99 would show that stall as one slow I/O among hundreds
#: (coordinated omission). Such a kind is judged on the victim's slowest I/O instead.
STALL_SECONDS = 1.0
#: The hostile client stops by itself this long after the victim's run should have ended:
#: a victim I/O it blocks then completes, late, and counts.
HOSTILE_GRACE_SECONDS = 5.0
START_TIMEOUT_SECONDS = 30.0
FINISH_TIMEOUT_SECONDS = 30.0
RSS_SAMPLE_SECONDS = 0.02
#: Passed to `stargate target` deadline flags (Data-Out, PDU) when it has them.
DEADLINE_SECONDS = 1.0
DEADLINE_FLAG = re.compile(r"--(?:[a-z0-9]+-)*(?:data-?out|r2t|pdu)(?:-[a-z0-9]+)*")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- the target's memory ---------------------------------------------------------------------


def status_kib(pid: int, field_name: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM), None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return None


class RssSampler:
    """Peak VmRSS of a process, sampled every RSS_SAMPLE_SECONDS in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(RSS_SAMPLE_SECONDS):
                return

    def _sample(self) -> None:
        rss = status_kib(self.pid, "VmRSS")
        if rss is not None:
            self.peak_kib = max(self.peak_kib, rss)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()

    @property
    def peak_bytes(self) -> int:
        return self.peak_kib * 1024


# --- the hostile client as a process ---------------------------------------------------------


class HostileError(RuntimeError):
    """The hostile client did not start or did not report."""


@dataclass
class HostileProcess:
    """``python -m benchmarks.hostile KIND URL --wait-for-go``: load, `go`, `finish`."""

    kind: HostileKind
    url: str
    max_seconds: float
    process: subprocess.Popen[str] | None = field(default=None, init=False)
    # a file, not a pipe: a client that writes a lot there must never block on it
    _errors: IO[str] | None = field(default=None, init=False)
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue, init=False)

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "benchmarks.hostile", self.kind.value, self.url]
        return [*argv, "--seconds", str(self.max_seconds), "--until-stdin-eof", "--wait-for-go"]

    def __enter__(self) -> Self:
        self._errors = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            self.argv(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
        )
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()
        try:
            self._expect("loaded")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def _next_line(self, timeout: float) -> str | None:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise HostileError(f"hostile {self.kind}: no output within {timeout} s") from None

    def _expect(self, word: str) -> None:
        line = self._next_line(START_TIMEOUT_SECONDS)
        if line != word:
            raise HostileError(f"hostile {self.kind}: expected {word!r}, got {line!r}: "
                               f"{self._stderr_tail()}")  # fmt: skip

    def _stderr_tail(self) -> str:
        if self._errors is None:
            return ""
        self._errors.seek(0)
        return self._errors.read()[-2000:]

    def go(self) -> None:
        """Start the attack; returns once it is under way."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        self._expect("ready")

    def finish(self) -> dict[str, Any]:
        """Stop the attack; its report (with the CPU seconds the client used)."""
        assert self.process is not None and self.process.stdin is not None
        try:
            used = cpu_seconds(self.process.pid)  # a zombie's /proc entry still has them
        except OSError:
            used = None
        self.process.stdin.close()
        deadline = time.monotonic() + FINISH_TIMEOUT_SECONDS
        while (remaining := deadline - time.monotonic()) > 0:
            line = self._next_line(remaining)
            if line is None:
                break
            if line.startswith("{"):
                report: dict[str, Any] = json.loads(line)
                report["cpu_seconds"] = used
                return report
        raise HostileError(f"hostile {self.kind}: no report: {self._stderr_tail()}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
            self.process = None
        if self._errors is not None:
            self._errors.close()
            self._errors = None


# --- one victim run --------------------------------------------------------------------------


@dataclass
class VictimRun:
    """The victim's figures in one run, beside ``hostile`` (None: alone)."""

    hostile: HostileKind | None
    p99_latency_us: float | None = None
    max_latency_us: float | None = None
    iops: float | None = None
    peak_rss_bytes: int = 0
    target_cpu_seconds: float | None = None  # from the victim's start to its end
    wall_seconds: float | None = None
    error: str | None = None
    hostile_report: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "hostile": None if self.hostile is None else self.hostile.value,
            "p99_latency_us": self.p99_latency_us,
            "max_latency_us": self.max_latency_us,
            "iops": self.iops,
            "peak_rss_bytes": self.peak_rss_bytes,
            "target_cpu_seconds": self.target_cpu_seconds,
            "wall_seconds": self.wall_seconds,
            "error": self.error,
            "hostile_report": self.hostile_report,
        }


def victim_run(
    fio: FioClient, target: BenchTarget, seconds: float, hostile: HostileKind | None
) -> VictimRun:
    run = VictimRun(hostile)
    job = FioJob("victim", target.url(VICTIM_DISK), VICTIM)
    max_seconds = seconds + HOSTILE_GRACE_SECONDS
    meter = CpuMeter(target.pid)
    started = time.monotonic()
    meter.start()
    with (
        RssSampler(target.pid) as sampler,
        ThreadPoolExecutor(max_workers=1) as executor,
    ):
        if hostile is None:
            future = executor.submit(fio.run_jobs, [job], seconds, ramp_seconds=RAMP_SECONDS)
            run.error = _victim_outcome(run, future.result)
        else:
            with HostileProcess(hostile, target.url(HOSTILE_DISK), max_seconds) as attacker:
                future = executor.submit(fio.run_jobs, [job], seconds, ramp_seconds=RAMP_SECONDS)
                port = HostileTarget.from_url(target.url(VICTIM_DISK)).port
                if not wait_for_connection(port, VICTIM_CONNECT_TIMEOUT_SECONDS):
                    raise HostileError(f"the victim never connected to port {port}")
                time.sleep(RAMP_SECONDS + START_MARGIN_SECONDS)
                attacker.go()
                run.error = _victim_outcome(run, future.result)
                run.hostile_report = attacker.finish()
    run.target_cpu_seconds = meter.stop()
    run.wall_seconds = time.monotonic() - started
    run.peak_rss_bytes = sampler.peak_bytes
    return run


def established_connections(port: int) -> int:
    """Established IPv4 TCP connections whose local port is ``port`` (the target's side)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == TCP_ESTABLISHED:
            count += 1
    return count


def wait_for_connection(port: int, timeout: float) -> bool:
    """Whether a connection to the target's ``port`` shows up within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if established_connections(port):
            return True
        time.sleep(0.01)
    return False


def _victim_outcome(run: VictimRun, result: Callable[..., dict[str, Any]]) -> str | None:
    """Fill the victim's figures from fio's result; the error if fio failed."""
    try:
        measured = result()["victim"]  # fio.run_jobs has a timeout of its own
    except ClientError as error:
        return str(error)[:2000]
    run.p99_latency_us = measured.p99_latency_us
    run.max_latency_us = measured.max_latency_us
    run.iops = measured.iops
    return None if measured.p99_latency_us is not None else "fio reported no p99 latency"


# --- the section -----------------------------------------------------------------------------


def stargate_deadline_args(help_text: str | None = None) -> list[str]:
    """Short Data-Out and PDU deadlines, if this `stargate target` has flags for them."""
    if help_text is None:
        completed = subprocess.run(
            [stargate_executable(), "target", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        help_text = completed.stdout
    args: list[str] = []
    for flag in dict.fromkeys(DEADLINE_FLAG.findall(help_text)):
        if "timeout" in flag or "deadline" in flag:
            value = DEADLINE_SECONDS * 1000 if flag.endswith("-ms") else DEADLINE_SECONDS
            args += [flag, f"{value:g}"]
    return args


def merge_hostile_reports(reports: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """The hostile client's reports of several runs as one: counts added, maxima kept."""
    merged: dict[str, Any] = {}
    for report in reports:
        for key, value in (report or {}).items():
            if value is None:
                merged.setdefault(key, None)
            elif key in ("held_max", "outstanding_max"):
                merged[key] = max(merged.get(key, 0), value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                merged[key] = (merged.get(key) or 0) + value
            elif isinstance(value, dict):
                merged[key] = _merged_counts(merged.get(key, {}), value)
            elif isinstance(value, list):
                merged[key] = [*merged.get(key, []), *value][:20]
            else:
                merged[key] = value
    return merged


def _merged_counts(into: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
    result = dict(into)
    for key, value in counts.items():
        if isinstance(value, dict):
            result[key] = _merged_counts(result.get(key, {}), value)
        else:
            result[key] = result.get(key, 0) + value
    return result


def summarize_kind(runs: Sequence[VictimRun], hwm_bytes: int | None) -> dict[str, Any]:
    """One hostile kind on one target: the victim alone and beside it (medians), the ratio,
    the target's peak RSS (sampled during the hostile runs; VmHWM of the process, which
    served only this kind's runs) and what the hostile client got (all runs added)."""
    alone = [run for run in runs if run.hostile is None]
    beside = [run for run in runs if run.hostile is not None]
    alone_p99 = median_or_none([run.p99_latency_us for run in alone])
    p99 = median_or_none([run.p99_latency_us for run in beside if run.error is None])
    victim_errors = [run.error for run in beside if run.error]
    sampled = max((run.peak_rss_bytes for run in beside), default=0)
    slowest = max((run.max_latency_us or 0.0 for run in beside), default=0.0) or None
    stalled = slowest is not None and slowest >= STALL_SECONDS * 1e6
    p99_ratio = ratio(p99, alone_p99)
    return {
        "alone_p99_us": alone_p99,
        "p99_us": p99,
        "p99_ratio": p99_ratio,
        "alone_max_latency_us": max((run.max_latency_us or 0.0 for run in alone), default=None),
        "max_latency_us": slowest,
        "stalled": stalled,
        # what the goal uses: the p99 ratio, or the stall against the p99 alone
        "judged_ratio": ratio(slowest, alone_p99) if stalled else p99_ratio,
        "alone_iops": median_or_none([run.iops for run in alone]),
        "iops": median_or_none([run.iops for run in beside if run.error is None]),
        "alone_target_cpu_share": median_or_none([cpu_share(run) for run in alone]),
        "target_cpu_share": median_or_none([cpu_share(run) for run in beside]),
        "alone_peak_rss_bytes": max((run.peak_rss_bytes for run in alone), default=None),
        "peak_rss_bytes": max(sampled, hwm_bytes or 0) or None,
        "vm_hwm_bytes": hwm_bytes,
        "victim_errors": victim_errors,
        "alone_errors": [run.error for run in alone if run.error],
        "hostile": merge_hostile_reports(run.hostile_report for run in beside),
    }


def cpu_share(run: VictimRun) -> float | None:
    """The target's CPU seconds per second of the run (1.0: one core busy all along)."""
    if run.target_cpu_seconds is None or not run.wall_seconds:
        return None
    return run.target_cpu_seconds / run.wall_seconds


def worst_of(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures the goals are judged on: the worst kind's ratio and RSS."""
    ratios = [figures["judged_ratio"] for figures in kinds.values()]
    peaks = [figures["peak_rss_bytes"] for figures in kinds.values()]
    return {
        # A victim that failed beside a hostile session was harmed: no ratio passes then.
        "victim_failed": any(figures["victim_errors"] for figures in kinds.values()),
        "worst_p99_ratio": max((r for r in ratios if r is not None), default=None),
        "peak_rss_bytes": max((peak for peak in peaks if peak is not None), default=None),
    }


def isolation_targets(deadline_args: Sequence[str], disk_size: int) -> list[BenchTarget]:
    """A fresh stargate and tgtd (not started): nothing one attack left behind (memory,
    sessions) shows in the next one's figures."""
    stargate = StargateServer(2, disk_size, extra_args=tuple(deadline_args))
    return [stargate, TgtdServer(2, disk_size)]


def run_isolation(
    settings: Settings,
    fio: FioClient,
    log: Log = _stderr,
    kinds: Sequence[HostileKind] = tuple(HostileKind),
) -> dict[str, Any]:
    deadline_args = stargate_deadline_args()
    runs: dict[str, dict[str, list[VictimRun]]] = {kind.value: {} for kind in TargetKind}
    hwm: dict[str, dict[str, int | None]] = {kind.value: {} for kind in TargetKind}
    errors: dict[str, str] = {}
    for hostile in kinds:
        targets = isolation_targets(deadline_args, settings.scale_disk_size)
        with contextlib.ExitStack() as stack:
            for target in targets:
                stack.enter_context(target)
            try:
                for run_index in range(settings.runs):
                    for target in alternating(targets, run_index):
                        for kind in (None, hostile):
                            run = victim_run(fio, target, settings.seconds, kind)
                            runs[target.kind].setdefault(hostile.value, []).append(run)
                            log(_run_line(target.kind, run))
            except HostileError as error:  # the other kinds still run
                errors[hostile.value] = str(error)[:2000]
                log(f"  isolation {hostile}: FAILED {error}")
            for target in targets:
                kib = status_kib(target.pid, "VmHWM")
                hwm[target.kind][hostile.value] = None if kib is None else kib * 1024
    results: dict[str, Any] = {
        "victim": f"fio {VICTIM.label} on vDisk B, hostile client on vDisk A of the same target",
        "seconds": settings.seconds,
        "ramp_seconds": RAMP_SECONDS,
        "hostile_starts_after_ramp_seconds": START_MARGIN_SECONDS,
        "stall_seconds": STALL_SECONDS,
        "stargate_args": list(deadline_args),
        "errors": errors,  # hostile kinds that could not be measured
        "runs": {
            target: {kind: [run.as_dict() for run in done] for kind, done in by_kind.items()}
            for target, by_kind in runs.items()
        },
    }
    for target_kind, by_kind in runs.items():
        kinds_summary = {
            kind: summarize_kind(done, hwm[target_kind].get(kind)) for kind, done in by_kind.items()
        }
        results[target_kind] = {"kinds": kinds_summary, **worst_of(kinds_summary)}
    return results


def _run_line(kind: TargetKind, run: VictimRun) -> str:
    hostile = run.hostile.value if run.hostile else "alone"
    figures = (
        f"victim FAILED: {run.error[:200]}"
        if run.error
        else f"victim p99 {run.p99_latency_us or 0:8.0f} us, max {run.max_latency_us or 0:9.0f} "
        f"us, {run.iops or 0:7.0f} IOPS"
    )
    report = run.hostile_report or {}
    got = (
        f"; hostile got {report.get('received', {})}, drops {report.get('drops', 0)}"
        if run.hostile
        else ""
    )
    share = cpu_share(run) or 0.0
    return (
        f"  isolation {kind:8} {hostile:9} {figures}, RSS peak "
        f"{run.peak_rss_bytes / (1 << 20):.1f} MiB, target CPU {share:.0%}{got}"
    )
