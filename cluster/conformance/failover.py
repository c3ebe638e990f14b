"""The failover suite's target side: a real local cluster (a stargate and a redirector per
node, `Supervisor` processes) and the scenario each test plays on it.

The driver's workload logs in through node 1's redirector to a vDisk of its own whose
home is node 1. Once node 1 serves it, node 1's CVM fails (SIGKILL, or SIGSTOP), the kit
waits for a remote CVM to serve the vDisk (the initiator's re-login through the
redirector makes that happen), revives node 1 (a restart, or SIGCONT), and waits for the
failback after the stable window. Then the workload stops, and the kit gathers what the
cluster recorded: the redirector's log (where each login of the vDisk was sent), the
stargates' write evidence (who wrote under which epoch, when) and the vDisk's data, read
back at node 1's CVM.
"""

from __future__ import annotations

import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path

import trio

from cluster.conformance.workloads import (
    CHUNK_BYTES,
    CHUNKS,
    WorkloadDriver,
    WorkloadJob,
    WorkloadRun,
)
from cluster.evidence import EpochEvidence, read_evidence
from cluster.provision import create_vm
from cluster.supervisor import Supervisor
from control.client import vdisk_table
from initiator.device import BlockDevice
from initiator.errors import InitiatorError
from initiator.session import SessionConfig
from initiator.url import IscsiUrl
from iscsicore.portal import Portal
from topology.naming import target_name_for
from topology.settings import HealthChecks
from topology.spec import ClusterPaths, ClusterSpec, ClusterSpecError

NODES = 3
HOME = 1
DEFAULT_CLUSTER_BASE = "127.79.0.0"
DEFAULT_STABLE_WINDOW = 3.0
# Quick health checks: a stopped CVM is found out within about 1.5 s.
HEALTH = HealthChecks(nop_interval=0.5, nop_timeout=1.0, misses=1, connect_timeout=1.0)
VDISK_SIZE = "16M"
START_TIMEOUT = 60.0
STEADY = 2.0  # seconds of I/O at home before the failure, and after each move
# Default: for the vDisk to be served by a remote CVM after the failure, seconds.
FAILOVER_TIMEOUT = 40.0
FAILBACK_SLACK = 30.0  # beyond the stable window
POLL = 0.2
SETTLE = 1.5  # beyond the stable window: the redirectors' health checks catch up
READ_BACK = SessionConfig(nop_interval=0, replacement_timeout=5.0)
_LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - \w+ - Redirecting target (\S+) to (\S+)$", re.M
)


class ClusterUnavailable(Exception):
    """The local cluster could not be set up: not the initiator's fault."""


class CvmFailure(Enum):
    KILL = "kill"  # SIGKILL, then started again
    STOP = "stop"  # SIGSTOP, then SIGCONT


@dataclass(frozen=True, slots=True)
class Redirect:
    at: float  # wall clock
    portal: str  # where the redirector sent the login


@dataclass(frozen=True, slots=True)
class FailoverEvidence:
    """What the cluster recorded during one failover test (wall-clock times)."""

    failure: CvmFailure
    home_cvm: str  # node 1's CVM portal
    remote_cvms: tuple[str, ...]
    started_at: float
    failed_at: float | None  # None: the vDisk never settled at home
    moved_at: float | None  # a remote CVM served the vDisk
    revived_at: float | None
    back_at: float | None  # node 1 served it again
    redirects: tuple[Redirect, ...]  # the redirector's decisions for the vDisk's logins
    epochs: tuple[EpochEvidence, ...]
    data: bytes | None  # the region as the target holds it (None: unreadable)
    read_error: str
    run: WorkloadRun
    run_ended_at: float  # when the driver's workload ended
    stopped_at: float | None  # when the scenario ended and the kit stopped the workload
    timeline: tuple[str, ...]


class LocalCluster:
    """A 3-node cluster in a temporary directory, up for one run of the kit."""

    def __init__(
        self,
        directory: Path,
        spec: ClusterSpec,
        supervisor: Supervisor,
        failover_timeout: float = FAILOVER_TIMEOUT,
    ) -> None:
        self.directory = directory
        self.spec = spec
        self.supervisor = supervisor
        self.failover_timeout = failover_timeout
        self._vms = 0
        # Until then node 1 may not yet count as stable: new logins would go elsewhere.
        self._settled_at = 0.0

    @classmethod
    @asynccontextmanager
    async def running(
        cls, base_address: str, stable_window: float, failover_timeout: float = FAILOVER_TIMEOUT
    ) -> AsyncIterator[LocalCluster]:
        directory = Path(tempfile.mkdtemp(prefix="stargate-conformance-"))
        try:
            try:
                spec = ClusterSpec.create(
                    directory,
                    NODES,
                    stable_window=stable_window,
                    base_address=base_address,
                    health=HEALTH,
                )
            except ClusterSpecError as error:
                raise ClusterUnavailable(f"cluster at {base_address}: {error}") from None
            supervisor = Supervisor(directory, redirectors=True)
            supervisor.remember_mode(redirectors=True)
            try:
                not_ready = await supervisor.start_all(START_TIMEOUT)
                if not_ready:
                    tails = "; ".join(
                        supervisor.log_tail(supervisor.process(name), 3)
                        for name in not_ready.split(", ")
                    )
                    raise ClusterUnavailable(
                        f"the cluster at {base_address} did not start ({not_ready}): {tails}"
                    )
                yield cls(directory, spec, supervisor, failover_timeout)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(supervisor.stop_many, supervisor.processes)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    @property
    def paths(self) -> ClusterPaths:
        return ClusterPaths(self.directory)

    def new_vdisk(self) -> str:
        self._vms += 1
        record, _ = create_vm(
            self.directory, f"conformance-{self._vms}", home_node=HOME, disks=1, size=VDISK_SIZE
        )
        return record.vdisk_ids[0]

    async def serving_node(self, vdisk: str) -> int | None:
        table = await vdisk_table(self.spec, self.paths)
        return next((row["serving_node"] for row in table if row["id"] == vdisk), None)

    async def wait_served(self, vdisk: str, nodes: set[int], timeout: float) -> float | None:
        """Until one of ``nodes`` serves ``vdisk``: the wall-clock time, or None."""
        with trio.move_on_after(timeout):
            while await self.serving_node(vdisk) not in nodes:
                await trio.sleep(POLL)
            return time.time()
        return None

    def redirects(self, target: str) -> tuple[Redirect, ...]:
        log = self.paths.log_file(self.spec.node(HOME).redirector_name)
        text = log.read_text(errors="replace") if log.exists() else ""
        return tuple(
            Redirect(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp(), portal)
            for stamp, name, portal in _LOG_LINE.findall(text)
            if name == target
        )

    async def read_region(self, vdisk: str) -> tuple[bytes | None, str]:
        """The workload's region as node 1's stargate serves it now."""
        url = IscsiUrl(
            Portal(self.spec.node(HOME).cvm_address, self.spec.node(HOME).cvm_port),
            target_name_for(vdisk),
        )
        try:
            with trio.fail_after(20):
                async with BlockDevice.open(url, READ_BACK) as device:
                    blocks = CHUNK_BYTES * CHUNKS // device.block_size
                    return bytes(await device.read(0, blocks)), ""
        except (InitiatorError, trio.TooSlowError, OSError) as error:
            return None, f"{type(error).__name__}: {error}"

    def fail(self, failure: CvmFailure) -> None:
        home = self.supervisor.stargate(HOME)
        if failure is CvmFailure.KILL:
            self.supervisor.kill(home)
        else:
            self.supervisor.send(home, signal.SIGSTOP)

    async def revive(self, failure: CvmFailure) -> None:
        home = self.supervisor.stargate(HOME)
        if failure is CvmFailure.KILL:
            self.supervisor.start(home)
        else:
            self.supervisor.send(home, signal.SIGCONT)
        await self.supervisor.wait_ready([home], START_TIMEOUT)
        self._settled_at = time.time() + self.spec.stable_window + SETTLE

    async def play(self, failure: CvmFailure, driver: WorkloadDriver) -> FailoverEvidence:
        await trio.sleep(max(0.0, self._settled_at - time.time()))
        vdisk = self.new_vdisk()
        target = target_name_for(vdisk)
        portal = Portal(
            self.spec.node(HOME).redirector_address, self.spec.node(HOME).redirector_port
        )
        stop = trio.Event()
        timeline: list[str] = []
        started = time.time()
        marks: dict[str, float | None] = dict.fromkeys(
            ("failed", "moved", "revived", "back", "stopped")
        )
        window = self.spec.stable_window
        budget = STEADY * 3 + self.failover_timeout + window + FAILBACK_SLACK + 2 * START_TIMEOUT
        run: WorkloadRun | None = None
        ended_at = 0.0

        def note(what: str) -> None:
            timeline.append(f"{time.time() - started:7.2f} s  {what}")

        async def workload() -> None:
            nonlocal run, ended_at
            run = await driver.run_workload(
                WorkloadJob(portal, target, stop), trio.current_time() + budget
            )
            ended_at = time.time()
            note(f"workload ended: exit status {run.exit_status}")
            nursery.cancel_scope.cancel()  # a workload that gave up ends the scenario

        async with trio.open_nursery() as nursery:
            nursery.start_soon(workload)
            try:
                await self._scenario(failure, vdisk, marks, note)
            finally:
                marks["stopped"] = time.time()
                stop.set()
        assert run is not None
        data, read_error = await self.read_region(vdisk)
        evidence = tuple(item for item in read_evidence(self.paths.evidence) if item.vdisk == vdisk)
        return FailoverEvidence(
            failure,
            self.spec.node(HOME).cvm_portal,
            tuple(node.cvm_portal for node in self.spec.nodes if node.node_id != HOME),
            started,
            marks["failed"],
            marks["moved"],
            marks["revived"],
            marks["back"],
            self.redirects(target),
            evidence,
            data,
            read_error,
            run,
            ended_at,
            marks["stopped"],
            tuple(timeline),
        )

    async def _scenario(
        self,
        failure: CvmFailure,
        vdisk: str,
        marks: dict[str, float | None],
        note: Callable[[str], None],
    ) -> None:
        remotes = {node.node_id for node in self.spec.nodes} - {HOME}
        if await self.wait_served(vdisk, {HOME}, self.failover_timeout) is None:
            note(f"the vDisk was never served by node {HOME}: no login")
            return
        note(f"node {HOME} serves the vDisk")
        await trio.sleep(STEADY)
        marks["failed"] = time.time()
        await trio.to_thread.run_sync(self.fail, failure)
        note(f"node {HOME}'s CVM: {'SIGKILL' if failure is CvmFailure.KILL else 'SIGSTOP'}")
        try:
            marks["moved"] = await self.wait_served(vdisk, remotes, self.failover_timeout)
            note(
                "a remote CVM serves the vDisk"
                if marks["moved"]
                else f"no remote CVM serves it after {self.failover_timeout:g} s"
            )
            await trio.sleep(STEADY)
        finally:
            # Even when the scenario is cut short (the workload gave up): never leave a
            # CVM killed or stopped.
            with trio.CancelScope(shield=True):
                marks["revived"] = time.time()
                await self.revive(failure)
        revived = "started" if failure is CvmFailure.KILL else "continued (SIGCONT)"
        note(f"node {HOME}'s CVM {revived}")
        marks["back"] = await self.wait_served(
            vdisk, {HOME}, self.spec.stable_window + FAILBACK_SLACK
        )
        note(f"node {HOME} serves the vDisk again" if marks["back"] else "no failback")
        await trio.sleep(STEADY)
