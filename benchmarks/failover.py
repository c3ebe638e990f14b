"""The I/O pause a client sees when its local stargate dies (SIGKILL) and when the vDisk
comes back to it (failback), through a 3-node cluster's redirector.

Failback runs in both modes: kill (quiesce then close the connections, the default) and
logout (AsyncEvent logout request). The project's initiator reports its longest I/O pause
itself. QEMU's libiscsi client runs as qemu-io: 4 KiB reads with 10 ms sleeps between
them; every read prints its rate, so the slowest read is the pause.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.clients import initiator_argv, initiator_measurement
from benchmarks.cluster import BenchCluster
from benchmarks.settings import Settings
from benchmarks.workloads import KiB, Pattern, Workload

Log = Callable[[str], None]
STABLE_WINDOW_SECONDS = 3.0
KILL_AFTER_SECONDS = 1.5
KILL_RUN_SECONDS = 6.0
#: failback waits for the stable window, the redirector's health checks and the logout
FAILBACK_RUN_SECONDS = STABLE_WINDOW_SECONDS + 7.0
QEMU_IO_SLEEP_MS = 10
FAILOVER_WORKLOAD = Workload("randrw-4k-qd4", Pattern.RANDRW, 4 * KiB, 4, read_percent=70)
# Each cycle's failback in each mode (`cluster set --failback`); "failback" is the default.
MODES = ("kill", "logout")
FAILBACK_EVENTS = {"kill": "failback", "logout": "failback-logout"}
_OPS_PER_SECOND = re.compile(r"and ([\d.]+) ops/sec")
_FAILED_COMMAND = re.compile(r"^\S+ failed: ", re.MULTILINE)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def slowest_qemu_io_command_seconds(output: str) -> float:
    """qemu-io prints ``... (X MiB/sec and Y ops/sec)`` per one-op command: 1/Y seconds."""
    rates = [float(rate) for rate in _OPS_PER_SECOND.findall(output)]
    if not rates:
        raise RuntimeError(f"qemu-io printed no rates:\n{output[-2000:]}")
    return max(1.0 / rate for rate in rates if rate > 0)


def qemu_io_argv(url: str, seconds: float) -> list[str]:
    reads = int(seconds * 1000 / (QEMU_IO_SLEEP_MS + 1))
    argv = ["qemu-io", "-f", "raw"]
    for _ in range(reads):
        argv += ["-c", "read 0 4k", "-c", f"sleep {QEMU_IO_SLEEP_MS}"]
    return [*argv, url]


class PauseProbe:
    """A client running in the background; `finish` returns its longest I/O pause."""

    def __init__(self, client: str, url: str, seconds: float) -> None:
        self.client = client
        argv = (
            initiator_argv([url], FAILOVER_WORKLOAD, seconds)
            if client == "initiator"
            else qemu_io_argv(url, seconds)
        )
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def finish(self, timeout: float) -> tuple[float, dict[str, Any]]:
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            stdout, stderr = self.process.communicate()
            raise RuntimeError(f"{self.client} did not finish in {timeout} s") from None
        if self.process.returncode != 0:
            raise RuntimeError(f"{self.client} failed: {stderr[-2000:]}")
        if self.client == "initiator":
            report = json.loads(stdout)
            pause = initiator_measurement(report).longest_pause_s or 0.0
            return pause, {"reconnects": report.get("reconnects"), "errors": report.get("errors")}
        output = stdout + stderr
        details = {
            "reads_done": len(_OPS_PER_SECOND.findall(output)),
            "failed_commands": len(_FAILED_COMMAND.findall(output)),
        }
        return slowest_qemu_io_command_seconds(output), details

    def running(self) -> bool:
        return self.process.poll() is None


def one_cycle(cluster: BenchCluster, client: str, url: str) -> dict[str, Any]:
    """Kill node 1's stargate under I/O, then start it and wait through the failback."""
    probe = PauseProbe(client, url, KILL_RUN_SECONDS)
    time.sleep(KILL_AFTER_SECONDS)
    running_at_kill = probe.running()
    cluster.cvm("kill", 1)
    kill_pause, kill_details = probe.finish(timeout=KILL_RUN_SECONDS + 60)
    kill_details |= {"client_running_at_kill": running_at_kill, "served_by": cluster.serving_node()}
    cluster.cvm("start", 1)
    probe = PauseProbe(client, url, FAILBACK_RUN_SECONDS)
    failback_pause, failback_details = probe.finish(timeout=FAILBACK_RUN_SECONDS + 60)
    failback_details["served_by"] = cluster.serving_node()
    return {
        "kill_pause_s": kill_pause,
        "failback_pause_s": failback_pause,
        "kill": kill_details,
        "failback": failback_details,
    }


def summarize(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "median_s": statistics.median(values),
        "max_s": max(values),
        "values_s": values,
    }


def run_failover(settings: Settings, log: Log = _stderr) -> dict[str, Any]:
    results: dict[str, Any] = {"notes": []}
    with BenchCluster(nodes=3, stable_window=STABLE_WINDOW_SECONDS) as cluster:
        created = cluster.create_vm("benchvm", node=1, disks=1, size="256M")
        url = cluster.vm_urls(created)[0]
        for client in ("initiator", "qemu-io"):
            cycles: list[dict[str, Any]] = []
            errors: list[str] = []
            for repeat, mode in itertools.product(range(settings.failover_repeats), MODES):
                try:
                    cluster.cli("cluster", "set", "--failback", mode)
                    cycle = one_cycle(cluster, client, url) | {"failback_mode": mode}
                except Exception as error:  # record and go on: the node may need restarting
                    errors.append(f"{type(error).__name__}: {error}"[:1000])
                    log(f"  failover {client} #{repeat}: FAILED {error}")
                    with contextlib.suppress(Exception):  # it may be running already
                        cluster.cvm("start", 1)
                    time.sleep(STABLE_WINDOW_SECONDS + 2)
                    continue
                cycles.append(cycle)
                log(
                    f"  failover {client:9} #{repeat}: kill pause {cycle['kill_pause_s']:.3f} s, "
                    f"failback ({mode}) pause {cycle['failback_pause_s']:.3f} s"
                )
            results[client] = {
                "kill": summarize([cycle["kill_pause_s"] for cycle in cycles]),
                **{
                    FAILBACK_EVENTS[mode]: summarize(
                        [c["failback_pause_s"] for c in cycles if c["failback_mode"] == mode]
                    )
                    for mode in MODES
                },
                "cycles": cycles,
                "errors": errors,
            }
    return results
