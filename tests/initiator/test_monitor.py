"""PortalMonitor: the health view a redirector keeps of each stargate (a discovery session
pinged with NOP-Outs; tgtd drops NOP-Outs on discovery sessions, so stargate it is)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from initiator.monitor import PortalMonitor
from iscsicore.portal import Portal
from tests.helpers.procs import ManagedProcess, ProcessReaper


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def start_stargate(reaper: ProcessReaper, port: int, data_dir: Path) -> ManagedProcess:
    argv = [
        sys.executable, "-m", "stargate", "target", "--portal", f"127.0.0.1:{port}",
        "--data-dir", str(data_dir), "--vdisk", "m1:16M", "--log-level", "WARNING",
    ]  # fmt: skip
    process = reaper.spawn(argv, name="stargate")
    process.wait_for_port("127.0.0.1", port)
    return process


async def test_monitor_follows_a_frozen_thawed_and_killed_stargate(
    process_reaper: ProcessReaper, free_port: int, tmp_data_dir: Path, nursery: trio.Nursery
) -> None:
    stargate = start_stargate(process_reaper, free_port, tmp_data_dir)
    changes: list[bool] = []
    monitor = PortalMonitor(
        Portal.parse(f"127.0.0.1:{free_port}"),
        interval=0.1,
        timeout=1.5,
        on_change=lambda healthy, why: changes.append(healthy),
    )
    nursery.start_soon(monitor.run)
    await wait_for(lambda: monitor.healthy is True)
    assert monitor.rtt is not None and monitor.rtt < 1.5
    os.kill(stargate.pid, signal.SIGSTOP)
    try:
        await wait_for(lambda: monitor.healthy is False)
        assert "NOP-Out unanswered" in monitor.error
    finally:
        os.kill(stargate.pid, signal.SIGCONT)
    await wait_for(lambda: monitor.healthy is True)
    stargate.kill()
    await wait_for(lambda: monitor.healthy is False)
    # A busy machine may add a spurious blip, never lose a real transition.
    assert changes[0] is True and changes[-1] is False and len(changes) >= 4


async def test_check_once(
    process_reaper: ProcessReaper, free_port: int, tmp_data_dir: Path
) -> None:
    stargate = start_stargate(process_reaper, free_port, tmp_data_dir)
    monitor = PortalMonitor(Portal.parse(f"127.0.0.1:{free_port}"), timeout=1.0)
    assert await monitor.check_once()
    stargate.kill()
    assert not await monitor.check_once()
    assert "login failed" in monitor.error


async def test_misses_in_a_row_before_down(
    process_reaper: ProcessReaper, free_port: int, tmp_data_dir: Path, nursery: trio.Nursery
) -> None:
    """With misses=3 a frozen stargate is down only after three unanswered NOP-Outs."""
    stargate = start_stargate(process_reaper, free_port, tmp_data_dir)
    monitor = PortalMonitor(
        Portal.parse(f"127.0.0.1:{free_port}"), interval=0.1, timeout=0.4, misses=3
    )
    nursery.start_soon(monitor.run)
    await wait_for(lambda: monitor.healthy is True)
    os.kill(stargate.pid, signal.SIGSTOP)
    stopped = trio.current_time()
    try:
        await wait_for(lambda: monitor.healthy is False)
        assert trio.current_time() - stopped >= 3 * 0.4 - 0.05
        assert "NOP-Out unanswered" in monitor.error
    finally:
        os.kill(stargate.pid, signal.SIGCONT)
    await wait_for(lambda: monitor.healthy is True)
