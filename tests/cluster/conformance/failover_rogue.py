"""Deliberately flawed failover workloads, for testing the failover suite's judge.

Each is the project's workload with one flaw a real initiator can have; the suite must
fail it for that flaw, although the driver itself reports success.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

import trio

from cluster.conformance.drivers import DriverJob, DriverRun
from cluster.conformance.workloads import (
    CHUNK_BYTES,
    CHUNKS,
    PASS_PAUSE,
    PROJECT_SESSION,
    WorkloadJob,
    WorkloadRun,
    chunk_pattern,
)
from initiator.device import BlockDevice
from initiator.url import IscsiUrl
from iscsicore.portal import Portal


class FailoverFlaw(Enum):
    # After the first login (through the redirector) it keeps the CVM's address, and
    # comes back there, never to the redirector.
    STICKY_PORTAL = "reconnects to the CVM it was redirected to, not the redirector"
    # Counts its last chunk as written without ever sending it: an acknowledged write lost.
    DROPS_A_WRITE = "reports a write it never sent"


@dataclass(frozen=True, slots=True)
class FlawedWorkload:
    flaw: FailoverFlaw
    name: str = "flawed-workload"
    chap: bool = False
    mutual_chap: bool = False

    def unavailable(self) -> str | None:
        return None

    def workload_unavailable(self) -> str | None:
        return None

    async def run(self, job: DriverJob, deadline: float) -> DriverRun:
        """Not used: only the failover suite is run with these."""
        return DriverRun(1, "a failover workload only", 0.0)

    async def run_workload(self, job: WorkloadJob, deadline: float) -> WorkloadRun:
        started = time.monotonic()
        portal = job.portal
        if self.flaw is FailoverFlaw.STICKY_PORTAL:
            async with BlockDevice.open(IscsiUrl(job.portal, job.target), PROJECT_SESSION) as dev:
                host, _, port = dev.stats.portal.rpartition(":")
                portal = Portal(host, int(port.split(",")[0]))
        written: dict[int, int] = {}
        longest, ios = 0.0, 0
        with trio.move_on_at(deadline):
            async with BlockDevice.open(IscsiUrl(portal, job.target), PROJECT_SESSION) as device:
                blocks = CHUNK_BYTES // device.block_size
                while not job.stop.is_set():
                    for chunk in range(CHUNKS):
                        written[chunk] = chunk_pattern(chunk)
                        if self.flaw is FailoverFlaw.DROPS_A_WRITE and chunk == CHUNKS - 1:
                            continue
                        began = trio.current_time()
                        await device.write(chunk * blocks, bytes([written[chunk]]) * CHUNK_BYTES)
                        longest = max(longest, trio.current_time() - began)
                        ios += 1
                    await trio.sleep(PASS_PAUSE)
        output = f"{self.flaw.value}: {ios} writes"
        return WorkloadRun(0, output, time.monotonic() - started, written, longest, ios)
