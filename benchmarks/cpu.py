"""CPU time and memory of a process from /proc: user+system time (all threads) and RSS."""

from __future__ import annotations

import os
import resource
from pathlib import Path

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def parse_stat_cpu_ticks(stat_line: str) -> int:
    """utime + stime (fields 14 and 15) of a /proc/<pid>/stat line, in clock ticks.

    The command name (field 2) is in parentheses and may hold spaces: split after its last ')'.
    """
    after_name = stat_line[stat_line.rindex(")") + 2 :].split()
    # after_name[0] is field 3 (state); utime is field 14, stime field 15
    return int(after_name[11]) + int(after_name[12])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far, all its threads included."""
    stat_line = Path(f"/proc/{pid}/stat").read_text()
    return parse_stat_cpu_ticks(stat_line) / CLOCK_TICKS_PER_SECOND


def rss_bytes(pid: int) -> int:
    """Resident set size now (/proc/<pid>/statm, second field, in pages)."""
    resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident_pages * PAGE_SIZE


class CpuMeter:
    """CPU seconds a process spends between `start` and `stop`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._started_at = 0.0

    def start(self) -> None:
        self._started_at = cpu_seconds(self.pid)

    def stop(self) -> float:
        return cpu_seconds(self.pid) - self._started_at


class ChildrenCpuMeter:
    """CPU seconds of the child processes that ended (and were waited for) between `start`
    and `stop`: what a client run as a subprocess spent."""

    def __init__(self) -> None:
        self._started_at = 0.0

    def start(self) -> None:
        self._started_at = _children_cpu_seconds()

    def stop(self) -> float:
        return _children_cpu_seconds() - self._started_at


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
