"""The initiator against the real cluster (stargates sharing vDisk files with ownership
hand-over; the real redirectors, or a scripted one in front): a CVM is killed mid-workload
and the vDisks move to the other node; later they fail back by logout request. The verify
workload on every vDisk sees no mismatch and no error."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from cluster.supervisor import Supervisor
from control.control_token import cluster_token
from initiator.device import BlockDevice
from initiator.session import SessionConfig
from initiator.vm_workload import DiskRun, run_vm_workload
from iscsicore.portal import Portal
from tests.initiator.fake_target import Address, FakeRedirector
from topology.spec import ClusterSpec, NodeSpec, node_addresses

CLI_TIMEOUT = 60.0


def stargate_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "stargate", *args],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"stargate {' '.join(args)}: {done.stderr}{done.stdout}"
    return done.stdout


def free_base(nodes: int = 2) -> str:
    rng = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "big"))
    for _ in range(100):
        base = f"127.{rng.randrange(100, 255)}.{rng.randrange(0, 240, 8)}.0"
        if base.split(".")[1] == "77":
            continue
        try:
            for node in range(1, nodes + 1):
                for address in node_addresses(base, node):
                    with socket.socket() as probe:
                        probe.bind((address, 3261))
        except OSError:
            continue
        return base
    raise RuntimeError("no free cluster base address")


def start_cluster(directory: Path, *, redirectors: bool) -> None:
    stargate_cli(
        "cluster", "up", "--nodes", "2", "--dir", str(directory), "--base-address", free_base(),
        "--stable-window", "2", "--detach", *([] if redirectors else ["--no-redirectors"]),
    )  # fmt: skip
    stargate_cli("vm", "create", "--dir", str(directory), "--node", "1", "--disks", "2",
                 "--size", "32M", "vm1")  # fmt: skip


def stop_cluster(directory: Path) -> None:
    if (directory / "cluster.json").exists():
        supervisor = Supervisor(directory, redirectors=True)
        for process in supervisor.processes:
            supervisor.stop(process, grace=3.0)


@pytest.fixture
def redirected_cluster(tmp_data_dir: Path) -> Iterator[Path]:
    """Two nodes, each a stargate and a redirector; vm1 (two vDisks) at home on node 1."""
    directory = tmp_data_dir / "cluster"
    try:
        start_cluster(directory, redirectors=True)
        yield directory
    finally:
        stop_cluster(directory)


@pytest.fixture
def cluster(tmp_data_dir: Path) -> Iterator[Path]:
    """Two stargates and no redirector: the tests put their own scripted one in front."""
    directory = tmp_data_dir / "cluster"
    try:
        start_cluster(directory, redirectors=False)
        yield directory
    finally:
        stop_cluster(directory)


def cvm(node: NodeSpec) -> Address:
    portal = Portal.parse(node.cvm_portal)
    return Address(portal.host, portal.port)


def ask_logout(node: NodeSpec, vdisk: str, directory: Path) -> None:
    request = urllib.request.Request(
        f"{node.http_url}/control/vdisks/{vdisk}/logout",
        data=b"",
        method="POST",
        headers={"Authorization": f"Bearer {cluster_token(directory)}"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


async def test_failover_and_failback_under_verify(cluster: Path, nursery: trio.Nursery) -> None:
    spec = ClusterSpec.load(cluster)
    node1, node2 = spec.node(1), spec.node(2)
    redirector = FakeRedirector(destination=cvm(node1))
    await nursery.start(redirector.serve)
    portal = Portal.parse(f"127.0.0.1:{redirector.port}")
    vdisks = ["vm1-0", "vm1-1"]
    snapshots: list[list[dict[str, object]]] = []

    stop = trio.Event()
    devices: dict[str, BlockDevice] = {}

    async def serving(node: NodeSpec) -> None:
        """Until every vDisk's session is logged in at ``node`` (bounded by the test)."""
        expected = f"{node.cvm_portal},1"
        while len(devices) < len(vdisks) or any(
            d.stats.portal != expected for d in devices.values()
        ):
            await trio.sleep(0.05)

    async def fail_over_then_back() -> None:
        try:
            with trio.fail_after(60):
                await serving(node1)
                await trio.sleep(1.0)
                redirector.destination = cvm(node2)  # what the redirector does once node 1 is down
                await trio.to_thread.run_sync(
                    stargate_cli, "cvm", "kill", "--dir", str(cluster), "1"
                )
                await serving(node2)
                await trio.sleep(1.0)
                await trio.to_thread.run_sync(
                    stargate_cli, "cvm", "start", "--dir", str(cluster), "1"
                )
                redirector.destination = cvm(node1)  # node 1 is stable again: fail back
                for vdisk in vdisks:
                    await trio.to_thread.run_sync(ask_logout, node2, vdisk, cluster)
                await serving(node1)
                await trio.sleep(1.0)
        finally:
            stop.set()  # whatever happened, the workload ends and reports

    def tick(runs: list[DiskRun]) -> None:
        for run in runs:
            if run.device is not None:
                devices[run.vdisk] = run.device
        snapshots.append([run.snapshot() for run in runs])

    nursery.start_soon(fail_over_then_back)
    runs = await run_vm_workload(
        portal,
        vdisks,
        seconds=0,
        queue_depth=4,
        region_bytes=4 << 20,
        config=SessionConfig(replacement_timeout=30),
        on_tick=tick,
        stop=stop,
    )
    for run in runs:
        snap = run.snapshot()
        assert snap["verify_ok"], json.dumps(snap, default=str)
        assert snap["mismatches"] == 0
        assert snap["reconnects"] == 2, snap  # to node 2, then back to node 1
        assert snap["portal"] == f"{node1.cvm_portal},1"
    served_by = {str(row[0]["portal"]) for row in snapshots if row and row[0].get("portal")}
    assert f"{node2.cvm_portal},1" in served_by


async def test_real_redirector_failover_and_failback(
    redirected_cluster: Path, nursery: trio.Nursery
) -> None:
    """Everything real: the VM logs in through node 1's redirector; node 1's CVM is killed
    (the redirector sends re-logins to node 2), then started again (after the stable
    window the redirector has node 2 send AsyncEvent 1, and the sessions come home)."""
    spec = ClusterSpec.load(redirected_cluster)
    node1, node2 = spec.node(1), spec.node(2)
    vdisks = ["vm1-0", "vm1-1"]
    devices: dict[str, BlockDevice] = {}
    stop = trio.Event()

    async def serving(node: NodeSpec) -> None:
        expected = f"{node.cvm_portal},1"
        while len(devices) < len(vdisks) or any(
            d.stats.portal != expected for d in devices.values()
        ):
            await trio.sleep(0.05)

    async def fail_over_then_back() -> None:
        try:
            with trio.fail_after(90):
                await serving(node1)
                await trio.sleep(1.0)
                await trio.to_thread.run_sync(
                    stargate_cli, "cvm", "kill", "--dir", str(redirected_cluster), "1"
                )
                await serving(node2)
                await trio.sleep(1.0)
                await trio.to_thread.run_sync(
                    stargate_cli, "cvm", "start", "--dir", str(redirected_cluster), "1"
                )
                await serving(node1)  # failback, driven by the redirector alone
                await trio.sleep(1.0)
        finally:
            stop.set()

    def tick(runs: list[DiskRun]) -> None:
        for run in runs:
            if run.device is not None:
                devices[run.vdisk] = run.device

    nursery.start_soon(fail_over_then_back)
    runs = await run_vm_workload(
        Portal.parse(node1.redirector_portal),
        vdisks,
        seconds=0,
        queue_depth=4,
        region_bytes=4 << 20,
        config=SessionConfig(replacement_timeout=60),
        on_tick=tick,
        stop=stop,
    )
    for run in runs:
        snap = run.snapshot()
        assert snap["verify_ok"] and snap["mismatches"] == 0, json.dumps(snap, default=str)
        assert snap["reconnects"] == 2, snap
        assert snap["portal"] == f"{node1.cvm_portal},1"
        assert float(snap["longest_pause_s"]) < 30  # type: ignore[arg-type]


async def test_hung_cvm_is_detected_by_nop_and_the_vdisks_move(
    redirected_cluster: Path, nursery: trio.Nursery
) -> None:
    """SIGSTOP on node 1's CVM: the socket stays open, so only the initiator's NOP-Out
    timeout notices; re-logins through the redirector land on node 2, which takes the
    vDisks over without node 1's consent. SIGCONT later: node 1 finds it lost them."""
    spec = ClusterSpec.load(redirected_cluster)
    node1, node2 = spec.node(1), spec.node(2)
    vdisks = ["vm1-0", "vm1-1"]
    devices: dict[str, BlockDevice] = {}
    stop = trio.Event()

    async def serving(node: NodeSpec) -> None:
        expected = f"{node.cvm_portal},1"
        while len(devices) < len(vdisks) or any(
            d.stats.portal != expected for d in devices.values()
        ):
            await trio.sleep(0.05)

    async def hang_then_resume() -> None:
        directory = str(redirected_cluster)
        try:
            with trio.fail_after(90):
                await serving(node1)
                await trio.sleep(1.0)
                await trio.to_thread.run_sync(stargate_cli, "cvm", "stop", "--dir", directory, "1")
                try:
                    await serving(node2)
                    await trio.sleep(1.0)
                finally:
                    await trio.to_thread.run_sync(
                        stargate_cli, "cvm", "cont", "--dir", directory, "1"
                    )
                await trio.sleep(1.0)
        finally:
            stop.set()

    def tick(runs: list[DiskRun]) -> None:
        for run in runs:
            if run.device is not None:
                devices[run.vdisk] = run.device

    nursery.start_soon(hang_then_resume)
    runs = await run_vm_workload(
        Portal.parse(node1.redirector_portal),
        vdisks,
        seconds=0,
        queue_depth=4,
        region_bytes=4 << 20,
        config=SessionConfig(nop_interval=0.5, nop_timeout=1.5, replacement_timeout=60),
        on_tick=tick,
        stop=stop,
    )
    for run in runs:
        snap = run.snapshot()
        assert snap["verify_ok"] and snap["mismatches"] == 0, json.dumps(snap, default=str)
        assert int(snap["reconnects"]) >= 1, snap  # type: ignore[call-overload]
