"""A load-balanced VM (`vm create --load-balance`), with real processes: its three vDisks,
logged in through node 1's redirector, are served by the three CVMs, one each, although
node 1's own CVM is healthy. When the CVM serving one of them is killed that vDisk moves to
another CVM; when it comes back it gets the vDisk back after the stable window. The VM's
workload verifies every block it wrote, throughout."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from cluster.provision import create_vm
from initiator.session import SessionConfig
from initiator.vm_workload import DiskRun, run_vm_workload
from iscsicore.portal import Portal
from redirector.policy import spread_node
from tests.helpers.procs import ProcessReaper
from tests.redirector.cluster import PORT, TestCluster

pytestmark = pytest.mark.slow

STABLE_WINDOW = 3.0
REDIRECTOR_TIMERS = ("--nop-interval", "0.5", "--nop-timeout", "2", "--startup-grace", "3")
INITIATOR = SessionConfig(nop_interval=1.0, nop_timeout=3.0, replacement_timeout=60.0)
MOVE_TIMEOUT = STABLE_WINDOW + 25.0


async def test_a_load_balanced_vm_spreads_fails_over_and_back(
    tmp_path: Path, process_reaper: ProcessReaper
) -> None:
    cluster = TestCluster.create(
        tmp_path / "cluster", process_reaper, nodes=3, stable_window=STABLE_WINDOW
    )
    record, _ = create_vm(
        cluster.directory, "lb", home_node=1, disks=3, size="16M", load_balance=True
    )
    homes = {vdisk: spread_node("lb", k, [1, 2, 3]) for k, vdisk in enumerate(record.vdisk_ids)}
    assert sorted(homes.values()) == [1, 2, 3]
    cluster.start_stargates()
    cluster.start_redirector(1, *REDIRECTOR_TIMERS)
    portal = Portal(cluster.node(1).redirector_address, PORT)
    stop = trio.Event()
    started: list[list[DiskRun]] = []
    finished: list[DiskRun] = []

    async def workload() -> None:
        finished.extend(
            await run_vm_workload(
                portal, record.vdisk_ids, seconds=0, region_bytes=4 << 20, config=INITIATOR,
                on_tick=lambda runs: started.append(runs) if not started else None, stop=stop,
            )
        )  # fmt: skip

    async with trio.open_nursery() as nursery:
        nursery.start_soon(workload)
        serving = await cluster.wait_serving(homes, 30)
        assert serving == homes, serving
        # The CVM serving vDisk lb-1 (not node 1's) dies: only that vDisk moves.
        victim = homes["lb-1"]
        cluster.kill_stargate(victim)
        with trio.fail_after(MOVE_TIMEOUT):
            while (serving := await cluster.serving_nodes()).get("lb-1") in (victim, None):
                await trio.sleep(0.2)
        assert {vdisk: serving[vdisk] for vdisk in ("lb-0", "lb-2")} == {
            "lb-0": homes["lb-0"],
            "lb-2": homes["lb-2"],
        }
        cluster.start_stargate(victim)
        serving = await cluster.wait_serving(homes, MOVE_TIMEOUT)
        assert serving == homes, serving
        assert started, "the workload never started"
        stop.set()

    for run in finished:
        assert run.error == "", run.error
        assert run.verify is not None and run.verify.mismatch_count == 0
        assert run.verify.errors == 0, run.verify.last_error
        assert run.verify.blocks_verified > 0
    assert {run.vdisk: run.device.stats.reconnects >= 2 for run in finished if run.device} == {
        "lb-0": False,
        "lb-1": True,
        "lb-2": False,
    }
