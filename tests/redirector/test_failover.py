"""Failover and failback with real processes: a 3-node cluster (cluster-mode stargates),
node 1's redirector, and clients logging in through it: the project's initiator running
its verify workload (no mismatch allowed), and QEMU's libiscsi (qemu-img, qemu-io).

Node 1's stargate is killed (or SIGSTOPped): each vDisk's re-login is redirected to a
remote CVM, the three vDisks of the VM spread over both remote CVMs (round-robin). Once it
is back and healthy for the stable window (5 s here), the remote stargates are asked to
log the sessions out, and the re-logins land on node 1 again.
"""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from initiator.device import BlockDevice
from initiator.session import SessionConfig
from initiator.verify import Verifier, VerifyReport
from initiator.vm import VM
from iscsicore.portal import Portal
from tests.conftest import require_tool
from tests.helpers.procs import ProcessReaper
from tests.redirector.cluster import PORT, TestCluster

pytestmark = pytest.mark.slow

STABLE_WINDOW = 5.0
REDIRECTOR_TIMERS = ("--nop-interval", "0.5", "--nop-timeout", "2", "--startup-grace", "3")
# Like QEMU's, but quicker to notice a hung target than libiscsi's defaults.
INITIATOR = SessionConfig(nop_interval=1.0, nop_timeout=3.0, replacement_timeout=60.0)
FAILOVER_TIMEOUT = 20.0
FAILBACK_TIMEOUT = STABLE_WINDOW + 25.0
IQN = "iqn.2010-06.com.nutanix:vmdisk-"


@pytest.fixture
def cluster(tmp_path: Path, process_reaper: ProcessReaper) -> TestCluster:
    cluster = TestCluster.create(
        tmp_path / "cluster", process_reaper, nodes=3, stable_window=STABLE_WINDOW
    )
    cluster.create_vm("vm1", disks=3, size="16M", home=1)
    cluster.start_stargates()
    cluster.start_redirector(1, *REDIRECTOR_TIMERS)
    return cluster


VDISKS = ["vm1-0", "vm1-1", "vm1-2"]


@dataclass
class Workload:
    devices: dict[str, BlockDevice] = field(default_factory=dict)
    verifiers: dict[str, Verifier] = field(default_factory=dict)
    reports: dict[str, VerifyReport] = field(default_factory=dict)

    def ios(self) -> dict[str, int]:
        return {vdisk: device.stats.ios for vdisk, device in self.devices.items()}

    async def wait_progress(self, timeout: float = 10.0) -> None:
        """Until every disk has completed more I/O than now."""
        before = self.ios()
        with trio.fail_after(timeout):
            while any(self.ios()[v] <= before[v] for v in before):
                await trio.sleep(0.05)


@asynccontextmanager
async def verify_workload(portal: Portal) -> AsyncIterator[Workload]:
    """The VM's three disks attached through the redirector, each running the verifier
    until the block ends; the reports are complete when it has."""
    workload = Workload()

    async def verify(vdisk: str, verifier: Verifier) -> None:
        workload.reports[vdisk] = await verifier.run(0, queue_depth=4)

    async with VM(portal, config=INITIATOR) as vm, trio.open_nursery() as nursery:
        for vdisk in VDISKS:
            device = await vm.attach(vdisk)
            workload.devices[vdisk] = device
            workload.verifiers[vdisk] = Verifier(device, region_blocks=8192, seed=len(vdisk))
        for vdisk, verifier in workload.verifiers.items():
            nursery.start_soon(verify, vdisk, verifier)
        try:
            yield workload
        finally:
            for verifier in workload.verifiers.values():
                verifier.stop()


async def wait_until(
    cluster: TestCluster, predicate: Callable[[dict[str, int | None]], bool], timeout: float
) -> dict[str, int | None]:
    serving: dict[str, int | None] = {}
    with trio.move_on_after(timeout):
        while True:
            serving = await cluster.serving_nodes()
            if predicate(serving):
                break
            await trio.sleep(0.2)
    return serving


def on_remotes(serving: dict[str, int | None]) -> bool:
    return all(serving.get(vdisk) in (2, 3) for vdisk in VDISKS)


def at_home(serving: dict[str, int | None]) -> bool:
    return all(serving.get(vdisk) == 1 for vdisk in VDISKS)


def assert_clean(workload: Workload) -> None:
    for vdisk, report in workload.reports.items():
        assert report.mismatch_count == 0, (vdisk, [str(m) for m in report.mismatches[:5]])
        assert report.errors == 0, (vdisk, report.last_error)
        assert report.blocks_verified > 0, vdisk


async def fail_over_and_back(
    cluster: TestCluster, crash: Callable[[], None], revive: Callable[[], None]
) -> Workload:
    node1 = cluster.node(1)
    async with verify_workload(Portal(node1.redirector_address, PORT)) as workload:
        await workload.wait_progress()
        serving = await wait_until(cluster, at_home, 10)
        assert at_home(serving), serving

        crash()
        serving = await wait_until(cluster, on_remotes, FAILOVER_TIMEOUT)
        assert on_remotes(serving), serving
        # Round-robin over the two remote CVMs: both serve some of the VM's disks.
        assert {serving[vdisk] for vdisk in VDISKS} == {2, 3}, serving
        await workload.wait_progress(FAILOVER_TIMEOUT)

        revive()
        serving = await wait_until(cluster, at_home, FAILBACK_TIMEOUT)
        assert at_home(serving), serving
        await workload.wait_progress(FAILOVER_TIMEOUT)
        for device in workload.devices.values():
            assert device.stats.reconnects >= 2  # away and back
    assert_clean(workload)
    return workload


def assert_logged_failover(cluster: TestCluster) -> None:
    log = cluster.redirector_log(1).read_text()
    local = cluster.node(1).cvm_address
    assert re.search(rf" - WARNING - Portal {re.escape(local)}:{PORT} is down\n", log), log
    down_at = log.index(f"Portal {local}:{PORT} is down")
    after = log[down_at:]
    assert f"Portal {local}:{PORT} is up" in after
    for node in (2, 3):
        assert f"to {cluster.node(node).cvm_address}:{PORT}" in after, after
    assert re.search(rf"Redirecting target {IQN}vm1-\d to {re.escape(local)}:{PORT}", after)


async def test_killed_stargate_fails_over_and_back(cluster: TestCluster) -> None:
    def crash() -> None:
        cluster.kill_stargate(1)

    def revive() -> None:
        cluster.start_stargate(1)

    await fail_over_and_back(cluster, crash, revive)
    assert_logged_failover(cluster)


async def test_hung_stargate_is_detected_by_nop_timeout(cluster: TestCluster) -> None:
    """SIGSTOP: the process still accepts TCP connections (backlog) but answers nothing."""

    def crash() -> None:
        cluster.signal_stargate(1, signal.SIGSTOP)

    def revive() -> None:
        cluster.signal_stargate(1, signal.SIGCONT)

    await fail_over_and_back(cluster, crash, revive)
    assert_logged_failover(cluster)


async def test_a_remote_that_dies_too_hands_its_vdisks_to_another(cluster: TestCluster) -> None:
    """Node 1 dies: the vDisks spread over nodes 2 and 3. Node 2 dies too: its vDisks go to
    node 3, the others stay. Both come back: everything fails back to node 1."""
    node1 = cluster.node(1)
    async with verify_workload(Portal(node1.redirector_address, PORT)) as workload:
        await workload.wait_progress()
        cluster.kill_stargate(1)
        serving = await wait_until(cluster, on_remotes, FAILOVER_TIMEOUT)
        assert on_remotes(serving), serving
        on_node_3 = {vdisk for vdisk in VDISKS if serving[vdisk] == 3}

        cluster.kill_stargate(2)
        serving = await wait_until(
            cluster, lambda s: all(s.get(v) == 3 for v in VDISKS), FAILOVER_TIMEOUT
        )
        assert all(serving[vdisk] == 3 for vdisk in VDISKS), serving
        await workload.wait_progress(FAILOVER_TIMEOUT)
        for vdisk in on_node_3:  # never disturbed by node 2's death
            assert workload.devices[vdisk].stats.reconnects == 1

        cluster.start_stargate(2)
        cluster.start_stargate(1)
        serving = await wait_until(cluster, at_home, FAILBACK_TIMEOUT)
        assert at_home(serving), serving
        await workload.wait_progress(FAILOVER_TIMEOUT)
    assert_clean(workload)


async def test_a_restarted_redirector_still_fails_back(cluster: TestCluster) -> None:
    """The redirector restarts while the vDisks are away: the new one learns from the
    ownership records which remote stargates to ask once node 1 is back."""
    node1 = cluster.node(1)
    async with verify_workload(Portal(node1.redirector_address, PORT)) as workload:
        await workload.wait_progress()
        cluster.kill_stargate(1)
        serving = await wait_until(cluster, on_remotes, FAILOVER_TIMEOUT)
        assert on_remotes(serving), serving

        cluster.redirectors[1].kill()
        cluster.start_redirector(1, *REDIRECTOR_TIMERS)
        cluster.start_stargate(1)
        serving = await wait_until(cluster, at_home, FAILBACK_TIMEOUT)
        assert at_home(serving), serving
        await workload.wait_progress(FAILOVER_TIMEOUT)
    assert_clean(workload)


async def test_whole_cluster_outage_is_ridden_out(cluster: TestCluster) -> None:
    """Every stargate dies: logins are refused (0x0301, service unavailable) and the guest
    keeps retrying; when they come back the I/O resumes, first on the remote CVMs (node 1
    must be stable for the window first), then at home."""
    node1 = cluster.node(1)
    async with verify_workload(Portal(node1.redirector_address, PORT)) as workload:
        await workload.wait_progress()
        for node_id in (1, 2, 3):
            cluster.kill_stargate(node_id)
        await trio.sleep(2.0)
        stalled = workload.ios()
        await trio.sleep(0.5)
        assert workload.ios() == stalled  # nothing completes with no CVM
        for node_id in (2, 3, 1):
            cluster.start_stargate(node_id)
        await workload.wait_progress(FAILOVER_TIMEOUT)
        serving = await wait_until(cluster, at_home, FAILBACK_TIMEOUT)
        assert at_home(serving), serving
        await workload.wait_progress(FAILOVER_TIMEOUT)
    assert_clean(workload)
    log = cluster.redirector_log(1).read_text()
    assert "No healthy portal for target" in log


# -- QEMU's libiscsi ------------------------------------------------------------------------


async def run_tool(argv: list[str], timeout: float) -> str:
    with trio.fail_after(timeout):
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{output}"
    return output


async def test_qemu_img_bench_survives_failover_and_failback(cluster: TestCluster) -> None:
    qemu_img = require_tool("qemu-img", why="QEMU's libiscsi client")
    qemu_io = require_tool("qemu-io", why="QEMU's libiscsi client")
    url = f"iscsi://{cluster.node(1).redirector_address}:{PORT}/{IQN}vm1-0/0"
    size = 16 << 20
    bench = [qemu_img, "bench", "-f", "raw", "-w", "-d", "8", "-s", "4096", "--pattern=90"]

    # Calibrate: enough writes to last ~25 s at this machine's current speed.
    started = trio.current_time()
    await run_tool([*bench, "-c", "2000", url], 60)
    rate = 2000 / max(trio.current_time() - started, 0.01)
    count = max(int(rate * 25), size // 4096)

    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def run_bench() -> None:
            await run_tool([*bench, "-c", str(count), url], 180)
            done.set()

        nursery.start_soon(run_bench)
        serving = await wait_until(cluster, lambda s: s.get("vm1-0") == 1, 10)
        assert serving["vm1-0"] == 1, serving
        await trio.sleep(2)
        cluster.kill_stargate(1)
        serving = await wait_until(cluster, lambda s: s.get("vm1-0") in (2, 3), FAILOVER_TIMEOUT)
        assert serving["vm1-0"] in (2, 3), serving
        await trio.sleep(1)
        cluster.start_stargate(1)
        serving = await wait_until(cluster, lambda s: s.get("vm1-0") == 1, FAILBACK_TIMEOUT)
        assert serving["vm1-0"] == 1, serving
        assert not done.is_set(), "the bench ended before failback: calibration too short"
    # Every block was written with the pattern, across the three stargates.
    await run_tool([qemu_io, "-f", "raw", "-c", f"read -P 90 0 {size}", url], 60)
