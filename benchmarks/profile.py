"""Where stargate spends its time on 4 KiB random reads at QD 32: py-spy samples the target
while fio drives it, and the collapsed stacks are summed per function (self and total).

    python -m benchmarks --only profile     # writes results/profile.txt and profile.svg
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from benchmarks.clients import FioClient, FioJob
from benchmarks.settings import Settings
from benchmarks.targets import StargateServer, fill_backing_file
from benchmarks.workloads import RANDREAD_QD32

Log = Callable[[str], None]
SAMPLES_PER_SECOND = 250
TOP_FUNCTIONS = 30


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def py_spy_executable() -> str:
    beside_python = Path(sys.executable).with_name("py-spy")
    return str(beside_python) if beside_python.exists() else "py-spy"


@dataclass(frozen=True)
class FunctionTime:
    function: str
    self_samples: int
    total_samples: int


def summarize_collapsed(text: str) -> tuple[int, list[FunctionTime]]:
    """Collapsed stacks (``frame;frame;... COUNT`` per line) -> samples, per-function times.

    A function counts once per stack for its total (recursion is not double counted); its
    self time is the stacks it ends.
    """
    self_counts: collections.Counter[str] = collections.Counter()
    total_counts: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame.strip() for frame in stack.split(";") if frame.strip()]
        if not frames:
            continue
        samples += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            total_counts[frame] += count
    functions = [FunctionTime(name, self_counts[name], total_counts[name]) for name in total_counts]
    return samples, functions


_LINE_NUMBER = re.compile(r":\d+\)")


def without_line_numbers(collapsed: str) -> str:
    """``func (file.py:12)`` -> ``func (file.py)``: one entry per function, not per line."""
    return _LINE_NUMBER.sub(")", collapsed)


def profile_table(samples: int, functions: list[FunctionTime]) -> str:
    def share(count: int) -> str:
        return f"{100 * count / samples:5.1f}%" if samples else "  -  "

    lines = [f"{samples} samples at {SAMPLES_PER_SECOND}/s", "", "By self time:"]
    for entry in sorted(functions, key=lambda f: f.self_samples, reverse=True)[:TOP_FUNCTIONS]:
        lines.append(f"  {share(entry.self_samples)}  {entry.function}")
    lines += ["", "By total (inclusive) time:"]
    for entry in sorted(functions, key=lambda f: f.total_samples, reverse=True)[:TOP_FUNCTIONS]:
        lines.append(f"  {share(entry.total_samples)}  {entry.function}")
    return "\n".join(lines) + "\n"


class Sampling(StrEnum):
    """What a sample means: the thread was not idle (WALL, counts time spent descheduled in
    a system call, e.g. after a loopback send woke the client), or it held the GIL (GIL:
    Python code running, close to the process's user CPU time)."""

    WALL = "wall"
    GIL = "gil"


def record(pid: int, seconds: float, output: Path, sampling: Sampling) -> None:
    argv = [py_spy_executable(), "record", "--pid", str(pid), "--duration", str(int(seconds))]
    argv += ["--rate", str(SAMPLES_PER_SECOND), "--format", "raw", "--output", str(output)]
    if sampling is Sampling.GIL:
        argv.append("--gil")
    completed = subprocess.run(argv, capture_output=True, timeout=seconds + 60, check=False)
    if completed.returncode != 0 or not output.exists():
        errors = completed.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"py-spy failed ({completed.returncode}): {errors}")


def run_profile(
    settings: Settings, fio: FioClient, out_dir: Path, log: Log = _stderr
) -> dict[str, Any]:
    """Sample stargate under fio twice (wall, then GIL) and write profile.txt."""
    seconds = max(3.0, settings.seconds * 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"seconds_each": seconds}
    report = [f"stargate under fio {RANDREAD_QD32.label}, py-spy {seconds:.0f} s per sampling"]
    with StargateServer(1, settings.disk_size) as stargate, tempfile.TemporaryDirectory() as tmp:
        fill_backing_file(stargate.backing_file(0))
        job = FioJob("profile", stargate.url(0), RANDREAD_QD32)
        load = threading.Thread(target=fio.run_jobs, args=([job], 2 * seconds + 4), daemon=True)
        load.start()
        time.sleep(1.0)  # past the login
        for sampling in Sampling:
            raw_path = Path(tmp) / f"{sampling.value}.txt"
            record(stargate.pid, seconds, raw_path, sampling)
            samples, functions = summarize_collapsed(without_line_numbers(raw_path.read_text()))
            table = profile_table(samples, functions)
            report += ["", f"=== sampling: {sampling.value}", table]
            log(f"  {sampling.value}: {samples} samples")
            top = sorted(functions, key=lambda f: f.self_samples, reverse=True)[:TOP_FUNCTIONS]
            results[sampling.value] = {
                "samples": samples,
                "top_self": [
                    {
                        "function": f.function,
                        "self_share": f.self_samples / samples if samples else None,
                    }
                    for f in top
                ],
            }
        load.join(timeout=2 * seconds + 120)
    (out_dir / "profile.txt").write_text("\n".join(report) + "\n")
    return results
