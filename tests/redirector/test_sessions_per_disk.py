"""Two sessions per disk (AHV Turbo) through the redirector, with real processes: a 3-node
cluster, a VM created with `--sessions-per-disk 2` running the project's VM workload (a
verifier per session, each on its own slice of the disk).

Both sessions of a disk land on the same CVM, move together to one remote CVM when the home
CVM is killed (the VM's two disks spread over the two remotes) and come home together;
at every check at most one stargate serves a disk, and it holds both of its sessions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from cluster.provision import create_vm
from control.client import fetch_all
from initiator.session import SessionConfig
from initiator.vm_workload import DiskRun, run_vm_workload
from iscsicore.portal import Portal
from tests.cluster.conftest import run_cli
from tests.helpers.procs import ProcessReaper
from tests.redirector.cluster import PORT, TestCluster
from topology.spec import ClusterPaths, VmRecord

pytestmark = pytest.mark.slow

STABLE_WINDOW = 3.0
REDIRECTOR_TIMERS = ("--nop-interval", "0.5", "--nop-timeout", "2", "--startup-grace", "3")
INITIATOR = SessionConfig(nop_interval=1.0, nop_timeout=3.0, replacement_timeout=60.0)
MOVE_TIMEOUT = STABLE_WINDOW + 25.0
VDISKS = ["vm1-0", "vm1-1"]


async def placement(cluster: TestCluster) -> dict[str, dict[int, int]]:
    """vDisk -> {node serving it: its connections there}, from every CVM's own page; a
    node that serves nothing of a vDisk but holds connections to it shows up as well."""
    answers = await fetch_all(cluster.spec, "/vdisks")
    seen: dict[str, dict[int, int]] = {vdisk: {} for vdisk in VDISKS}
    for answer in answers:
        if not answer.answered:
            continue
        for entry in answer.document:
            if entry["id"] in seen and (entry["serving"] or entry["connections"]):
                seen[entry["id"]][answer.node_id] = int(entry["connections"])
    return seen


def together_on(seen: dict[str, dict[int, int]], nodes: set[int]) -> bool:
    """Each vDisk served by exactly one node of ``nodes``, with both sessions there."""
    return all(
        len(where) == 1 and next(iter(where)) in nodes and next(iter(where.values())) == 2
        for where in seen.values()
    )


async def wait_together(
    cluster: TestCluster, nodes: set[int], timeout: float
) -> dict[str, dict[int, int]]:
    seen: dict[str, dict[int, int]] = {}
    with trio.move_on_after(timeout):
        while not together_on(seen := await placement(cluster), nodes):
            await trio.sleep(0.2)
    assert together_on(seen, nodes), seen
    return seen


async def wait_progress(runs: list[DiskRun], timeout: float) -> None:
    """Until every session of every disk has completed more I/O than now."""
    devices = [device for run in runs for device in run.sessions]
    before = [device.stats.ios for device in devices]
    with trio.fail_after(timeout):
        while any(d.stats.ios <= b for d, b in zip(devices, before, strict=True)):
            await trio.sleep(0.05)


async def test_both_sessions_of_a_disk_fail_over_and_back_together(
    tmp_path: Path, process_reaper: ProcessReaper
) -> None:
    cluster = TestCluster.create(
        tmp_path / "cluster", process_reaper, nodes=3, stable_window=STABLE_WINDOW
    )
    create_vm(cluster.directory, "vm1", home_node=1, disks=2, size="16M", sessions_per_disk=2)
    record = VmRecord.load(ClusterPaths(cluster.directory).vm_file("vm1"))
    assert record.sessions_per_disk == 2
    cluster.start_stargates()
    cluster.start_redirector(1, *REDIRECTOR_TIMERS)
    portal = Portal(cluster.node(1).redirector_address, PORT)
    stop = trio.Event()
    started: list[list[DiskRun]] = []
    finished: list[DiskRun] = []

    async def workload() -> None:
        finished.extend(
            await run_vm_workload(
                portal,
                record.vdisk_ids,
                seconds=0,
                region_bytes=8 << 20,
                config=INITIATOR,
                on_tick=lambda runs: started.append(runs) if not started else None,
                stop=stop,
                sessions_per_disk=record.sessions_per_disk,
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(workload)
        with trio.fail_after(20):
            while not started:
                await trio.sleep(0.05)
        (runs,) = started
        assert [len(run.sessions) for run in runs] == [2, 2], [run.error for run in runs]
        await wait_progress(runs, 10)
        await wait_together(cluster, {1}, 10)
        listing = json.loads(
            (
                await trio.to_thread.run_sync(
                    lambda: run_cli("vdisk", "list", "--dir", str(cluster.directory), "--json")
                )
            ).stdout
        )
        assert {(row["id"], row["serving_node"], row["connections"]) for row in listing} == {
            ("vm1-0", 1, 2),
            ("vm1-1", 1, 2),
        }

        cluster.kill_stargate(1)
        away = await wait_together(cluster, {2, 3}, MOVE_TIMEOUT)
        # Round-robin per vDisk: the VM's two disks on the two remotes, each whole.
        assert {next(iter(where)) for where in away.values()} == {2, 3}, away
        await wait_progress(runs, MOVE_TIMEOUT)

        cluster.start_stargate(1)
        await wait_together(cluster, {1}, MOVE_TIMEOUT)
        await wait_progress(runs, MOVE_TIMEOUT)
        for run in runs:
            for device in run.sessions:
                assert device.stats.reconnects >= 2, run.vdisk  # away and back
        stop.set()

    for run in finished:
        assert run.error == "", run.error
        assert run.verify is not None
        assert run.verify.mismatch_count == 0, [str(m) for m in run.verify.mismatches[:5]]
        assert run.verify.errors == 0, run.verify.last_error
        assert run.verify.blocks_verified > 0
