"""The redirector's membership watch on a real coordinator (the cluster directory's liveness
files: a member is alive while its process holds the file's lock): a stargate whose process
dies is reported down through the coordinator, and up again once it registers and accepts
connections. The health checker and placement policy are the real ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from redirector.config import RedirectorConfig
from redirector.health import HealthChecker
from redirector.log import redirector_logger
from redirector.membership import Membership
from redirector.policy import PlacementPolicy
from tests.redirector.cluster import make_spec
from topology.directory_coordination import DirectoryCoordinator

_STARGATE_2 = """
import sys, trio
from pathlib import Path
from topology.directory_coordination import DirectoryCoordinator

async def main():
    coordinator = DirectoryCoordinator(Path(sys.argv[1]))
    await coordinator.register("stargate-2", {"pid": 2})
    print("registered", flush=True)
    await trio.sleep(60)

trio.run(main)
"""


async def test_a_stargate_leaving_the_coordinator_is_down_and_back_when_it_returns(
    tmp_path: Path,
) -> None:
    spec = make_spec(tmp_path, 2, stable_window=5.0)
    config = RedirectorConfig(tmp_path, spec, 1)
    policy = PlacementPolicy(nodes=["1", "2"], local="1", stable_window=5.0)
    health = HealthChecker(config, policy, redirector_logger(tmp_path / "r.log"))
    health.started_at = trio.current_time() - 3600  # past the startup grace
    health.report("2", True, "its NOP monitor saw it answer")
    membership = Membership(config, health)
    coordinator = DirectoryCoordinator(tmp_path)
    member = subprocess.Popen(
        [sys.executable, "-c", _STARGATE_2, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        start_new_session=True,
    )
    try:
        assert member.stdout is not None
        assert await trio.to_thread.run_sync(member.stdout.readline) == "registered\n"
        await membership.look(coordinator)
        assert membership.members == {"stargate-2"} and policy.is_healthy("2")
        os.kill(member.pid, signal.SIGKILL)
        await trio.to_thread.run_sync(member.wait)
    finally:
        member.kill()
        member.wait(timeout=10)
    await membership.look(coordinator)
    assert not policy.is_healthy("2")  # at once, not after missed NOP-Outs

    # It comes back: registered again and listening, so up again.
    node = spec.node(2)
    listeners = await trio.open_tcp_listeners(node.cvm_port, host=node.cvm_address)
    try:
        await coordinator.register("stargate-2", {"pid": 3})
        await membership.look(coordinator)
        assert policy.is_healthy("2")
    finally:
        for listener in listeners:
            await listener.aclose()
        await coordinator.aclose()
    log = (tmp_path / "r.log").read_text()
    assert f"Portal {node.cvm_address}:{node.cvm_port} is down" in log
