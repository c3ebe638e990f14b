"""stargate's resident memory with 1, 100 and 1000 vDisks, and with 1000 idle connections
(one logged-in session per vDisk, held by `benchmarks.idle_connections`)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.cpu import rss_bytes
from benchmarks.targets import MiB, StargateServer, TgtdServer

Log = Callable[[str], None]
MEMORY_DISK_SIZE = 64 * MiB
SETTLE_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 300.0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def settled_rss(pid: int) -> int:
    time.sleep(SETTLE_SECONDS)
    return rss_bytes(pid)


def idle_connections_rss(stargate: StargateServer, count: int) -> int:
    """RSS of ``stargate`` while ``count`` sessions (vDisks 0..count-1) sit idle."""
    template = stargate.url(0).replace(stargate.disk_id(0), "d{disk}")
    argv = [sys.executable, "-m", "benchmarks.idle_connections", template, str(count)]
    holder = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        assert holder.stdout is not None
        deadline = time.monotonic() + CONNECT_TIMEOUT_SECONDS
        line = ""
        while time.monotonic() < deadline and not line.startswith("ready"):
            line = holder.stdout.readline()
            if not line and holder.poll() is not None:
                errors = holder.stderr.read() if holder.stderr else ""
                raise RuntimeError(f"idle connection holder died: {errors[-2000:]}")
        return settled_rss(stargate.pid)
    finally:
        holder.kill()
        holder.wait(timeout=30)


def run_memory(settings: Any, log: Log = _stderr) -> dict[str, Any]:
    rss: dict[str, int] = {}
    for disk_count in settings.memory_disk_counts:
        with StargateServer(disk_count, MEMORY_DISK_SIZE) as stargate:
            key = f"stargate_{disk_count}_vdisks"
            rss[key] = settled_rss(stargate.pid)
            log(f"  stargate {disk_count:5} vDisks: RSS {rss[key] / MiB:.1f} MiB")
            if disk_count == max(settings.memory_disk_counts):
                connections = min(settings.idle_connections, disk_count)
                key = f"stargate_{connections}_idle_connections"
                rss[key] = idle_connections_rss(stargate, connections)
                log(f"  stargate {connections:5} idle connections: RSS {rss[key] / MiB:.1f} MiB")
    with TgtdServer(1, MEMORY_DISK_SIZE) as tgtd:
        rss["tgtd_1_lun"] = settled_rss(tgtd.pid)
    return {"rss_bytes": rss, "rss_mib": {key: value / MiB for key, value in rss.items()}}
