"""Both failback modes against real clients: a 2-node cluster (real stargate and redirector
processes), node 1's stargate killed and started again, each vDisk coming home once node 1
has been stable for the window.

- The project's initiator runs its verify workload on vm1-0 (no mismatch, no error).
- QEMU's libiscsi (qemu-io) writes a pattern per 4 KiB block of vm1-1, one block every
  10 ms, while the failback happens; every block is read back afterwards.

Each client's longest pause at failback is printed (`-s` shows it): with ``kill`` the
remote stargate quiesces and closes the connections, the client reconnects at once; with
``logout`` it sends AsyncEvent 1 and the client logs out and in again. The third case
starts in logout and is switched to kill with `stargate cluster set` while failed over: the
running redirector follows cluster.json.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import trio

from initiator.device import BlockDevice
from initiator.session import SessionConfig
from initiator.verify import Verifier, VerifyReport
from initiator.vm import VM
from iscsicore.portal import Portal
from tests.cluster.conftest import run_cli
from tests.conftest import require_tool
from tests.helpers.procs import ProcessReaper
from tests.redirector.cluster import PORT, TestCluster
from topology.settings import FailbackMode

pytestmark = pytest.mark.slow

STABLE_WINDOW = 3.0
REDIRECTOR_TIMERS = ("--nop-interval", "0.5", "--nop-timeout", "2", "--startup-grace", "3")
INITIATOR = SessionConfig(nop_interval=1.0, nop_timeout=3.0, replacement_timeout=60.0)
FAILOVER_TIMEOUT = 20.0
FAILBACK_TIMEOUT = STABLE_WINDOW + 25.0
QEMU_BLOCKS = 1500  # 4 KiB writes, 10 ms apart: at least 15 s, across the failback
QEMU_SLEEP_MS = 10
# A pause longer than this at failback is a regression: kill is sub-second here, and the
# logout mode's drop timer is 5 s.
MAX_FAILBACK_PAUSE = 8.0
_OPS_PER_SECOND = re.compile(r"and ([\d.]+) ops/sec")
_FAILED = re.compile(r"^\S+ failed: ", re.MULTILINE)


def pattern(block: int) -> int:
    return block % 250 + 1


def qemu_writes(url: str) -> list[str]:
    argv = ["-f", "raw"]
    for block in range(QEMU_BLOCKS):
        argv += ["-c", f"write -P {pattern(block)} {block * 4096} 4k"]
        argv += ["-c", f"sleep {QEMU_SLEEP_MS}"]
    return [*argv, url]


def qemu_reads(url: str) -> list[str]:
    argv = ["-f", "raw"]
    for block in range(QEMU_BLOCKS):
        argv += ["-c", f"read -P {pattern(block)} {block * 4096} 4k"]
    return [*argv, url]


def slowest_command(output: str) -> float:
    """qemu-io prints ``(... and Y ops/sec)`` per one-op command: the slowest is 1/min(Y)."""
    rates = [float(rate) for rate in _OPS_PER_SECOND.findall(output)]
    assert rates, output[-2000:]
    return max(1.0 / rate for rate in rates if rate > 0)


async def run_qemu_io(qemu_io: str, argv: list[str], timeout: float) -> str:
    with trio.fail_after(timeout):
        result = await trio.run_process(
            [qemu_io, *argv], capture_stdout=True, capture_stderr=True, check=False
        )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output[-2000:]
    assert not _FAILED.search(output), _FAILED.findall(output)[:5]
    return output


async def wait_serving(cluster: TestCluster, vdisk: str, nodes: set[int], timeout: float) -> None:
    serving: dict[str, int | None] = {}
    with trio.move_on_after(timeout):
        while serving.get(vdisk) not in nodes:
            serving = await cluster.serving_nodes()
            await trio.sleep(0.2)
    assert serving.get(vdisk) in nodes, (vdisk, serving, nodes)


async def wait_progress(device: BlockDevice, timeout: float) -> None:
    before = device.stats.ios
    with trio.fail_after(timeout):
        while device.stats.ios <= before:
            await trio.sleep(0.05)


@pytest.mark.parametrize(
    ("initial", "mode"),
    [
        (FailbackMode.KILL, FailbackMode.KILL),
        (FailbackMode.LOGOUT, FailbackMode.LOGOUT),
        (FailbackMode.LOGOUT, FailbackMode.KILL),  # `cluster set` while failed over
    ],
    ids=["kill", "logout", "logout-set-to-kill-live"],
)
async def test_failback_mode_with_the_initiator_and_qemu(
    tmp_path: Path, process_reaper: ProcessReaper, initial: FailbackMode, mode: FailbackMode
) -> None:
    qemu_io = require_tool("qemu-io", why="QEMU's libiscsi client")
    cluster = TestCluster.create(
        tmp_path / "cluster", process_reaper, nodes=2, stable_window=STABLE_WINDOW, failback=initial
    )
    cluster.create_vm("vm1", disks=2, size="16M", home=1)
    cluster.start_stargates()
    cluster.start_redirector(1, *REDIRECTOR_TIMERS)
    portal = Portal(cluster.node(1).redirector_address, PORT)
    qemu_url = f"iscsi://{portal.host_port}/iqn.2010-06.com.nutanix:vmdisk-vm1-1/0"
    reports: dict[str, VerifyReport] = {}

    async with VM(portal, config=INITIATOR) as vm, trio.open_nursery() as nursery:
        device = await vm.attach("vm1-0")
        verifier = Verifier(device, region_blocks=8192, seed=7)

        async def verify() -> None:
            reports["vm1-0"] = await verifier.run(0, queue_depth=4)

        nursery.start_soon(verify)
        await wait_progress(device, 10)
        await wait_serving(cluster, "vm1-0", {1}, 10)

        cluster.kill_stargate(1)
        await wait_serving(cluster, "vm1-0", {2}, FAILOVER_TIMEOUT)
        await wait_progress(device, FAILOVER_TIMEOUT)

        qemu_done = trio.Event()
        outputs: list[str] = []

        async def writes() -> None:
            outputs.append(await run_qemu_io(qemu_io, qemu_writes(qemu_url), 180))
            qemu_done.set()

        nursery.start_soon(writes)
        await wait_serving(cluster, "vm1-1", {2}, FAILOVER_TIMEOUT)
        if mode is not initial:  # the running redirector reads it at failback
            await trio.to_thread.run_sync(
                lambda: run_cli(
                    "cluster", "set", "--dir", str(cluster.directory), "--failback", mode.value
                )
            )
        device.stats.pauses.longest = 0.0  # from here on: the failback's pause only
        cluster.start_stargate(1)
        for vdisk in ("vm1-0", "vm1-1"):
            await wait_serving(cluster, vdisk, {1}, FAILBACK_TIMEOUT)
        assert not qemu_done.is_set(), "qemu-io ended before failback: nothing measured"
        await wait_progress(device, FAILOVER_TIMEOUT)
        initiator_pause = device.stats.pauses.longest_so_far(time.monotonic())
        verifier.stop()
        with trio.fail_after(180):
            await qemu_done.wait()

    report = reports["vm1-0"]
    assert report.mismatch_count == 0, [str(m) for m in report.mismatches[:5]]
    assert report.errors == 0, report.last_error
    assert report.blocks_verified > 0
    assert device.stats.reconnects >= 2  # away and back
    qemu_pause = slowest_command(outputs[0])
    # Every block qemu-io wrote (and was told was written) is there, read through the
    # redirector from node 1.
    await run_qemu_io(qemu_io, qemu_reads(qemu_url), 120)
    print(
        f"\nfailback {initial.value}->{mode.value}: initiator pause {initiator_pause:.3f} s, "
        f"qemu-io pause {qemu_pause:.3f} s"
    )
    assert initiator_pause < MAX_FAILBACK_PAUSE
    assert qemu_pause < MAX_FAILBACK_PAUSE
    log = cluster.redirector_log(1).read_text()
    said = r"quiesced and killed 1 connection" if mode is FailbackMode.KILL else r"asked 1 session"
    assert re.search(rf"Failing back target \S+vm1-0: \S+ {said}", log), log
