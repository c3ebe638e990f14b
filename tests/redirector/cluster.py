"""A small cluster for the redirector's tests: real cluster-mode stargate processes (and
redirector processes, or an in-process redirector), each node on its own unique loopback
addresses so that parallel tests never collide.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import trio

from cluster.provision import create_vm
from control.client import vdisk_table
from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.login import InitiatorLogin, LoginDone, LoginFailed, LoginRedirect
from iscsicore.pdu import LoginRequest, LoginResponse
from tests.helpers.net import unique_loopback_address
from tests.helpers.procs import ManagedProcess, ProcessReaper
from topology.settings import DEFAULT_FAILBACK, DEFAULT_HEALTH, FailbackMode, HealthChecks
from topology.spec import ClusterPaths, ClusterSpec, NodeSpec, VmRecord

PORT = 3261
HTTP_PORT = 2009
START_TIMEOUT = 30.0  # a loaded machine (2 cores, parallel tests) starts Python slowly


def make_spec(
    directory: Path,
    nodes: int,
    *,
    stable_window: float,
    failback: FailbackMode = DEFAULT_FAILBACK,
    health: HealthChecks = DEFAULT_HEALTH,
) -> ClusterSpec:
    """cluster.json for ``nodes`` nodes, every address unique to this test."""
    node_specs = [
        NodeSpec(
            node_id=node_id,
            cvm_address=unique_loopback_address(),
            redirector_address=unique_loopback_address(),
            http_port=HTTP_PORT,
        )
        for node_id in range(1, nodes + 1)
    ]
    spec = ClusterSpec(
        node_specs,
        stable_window=stable_window,
        base_address="127.0.0.0",
        failback=failback,
        health=health,
    )
    spec.save(directory)
    return spec


@dataclass
class TestCluster:
    directory: Path
    spec: ClusterSpec
    reaper: ProcessReaper
    stargates: dict[int, ManagedProcess] = field(default_factory=dict)
    redirectors: dict[int, ManagedProcess] = field(default_factory=dict)

    __test__ = False  # not a test class, whatever its name

    @classmethod
    def create(
        cls,
        directory: Path,
        reaper: ProcessReaper,
        nodes: int = 3,
        *,
        stable_window: float = 5.0,
        failback: FailbackMode = DEFAULT_FAILBACK,
        health: HealthChecks = DEFAULT_HEALTH,
    ) -> TestCluster:
        spec = make_spec(
            directory, nodes, stable_window=stable_window, failback=failback, health=health
        )
        return cls(directory, spec, reaper)

    @property
    def paths(self) -> ClusterPaths:
        return ClusterPaths(self.directory)

    def node(self, node_id: int) -> NodeSpec:
        return self.spec.node(node_id)

    def create_vm(self, name: str, *, disks: int, size: str = "64M", home: int = 1) -> VmRecord:
        record, _ = create_vm(self.directory, name, home_node=home, disks=disks, size=size)
        return record

    # -- processes --------------------------------------------------------------------------

    def start_stargate(self, node_id: int, *, wait: bool = True) -> ManagedProcess:
        argv: list[str | Path] = [
            sys.executable,
            "-m",
            "cluster.cvm",
            "--dir",
            self.directory,
        ]
        process = self.reaper.spawn([*argv, "--node", str(node_id)], name=f"stargate-{node_id}")
        self.stargates[node_id] = process
        if wait:
            process.wait_for_port(self.node(node_id).cvm_address, PORT, timeout=START_TIMEOUT)
        return process

    def start_stargates(self) -> None:
        for node in self.spec.nodes:
            self.start_stargate(node.node_id, wait=False)
        for node in self.spec.nodes:
            self.stargates[node.node_id].wait_for_port(
                node.cvm_address, PORT, timeout=START_TIMEOUT
            )

    def start_redirector(self, node_id: int, *options: str) -> ManagedProcess:
        argv: list[str | Path] = [sys.executable, "-m", "redirector", "--dir", self.directory]
        log = self.redirector_log(node_id)
        process = self.reaper.spawn(
            [*argv, "--node", str(node_id), "--log", log, *options], name=f"redirector-{node_id}"
        )
        self.redirectors[node_id] = process
        node = self.node(node_id)
        process.wait_for_port(node.redirector_address, PORT, timeout=START_TIMEOUT)
        return process

    def redirector_log(self, node_id: int) -> Path:
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        return self.paths.log_file(f"redirector-{node_id}")

    def kill_stargate(self, node_id: int) -> None:
        """SIGKILL, by PID: a crash, not a shutdown."""
        self.stargates[node_id].kill()

    def signal_stargate(self, node_id: int, signum: signal.Signals) -> None:
        os.kill(self.stargates[node_id].pid, signum)

    # -- observation ----------------------------------------------------------------------

    async def serving_nodes(self) -> dict[str, int | None]:
        """vDisk id -> the node whose stargate serves it now (its own /vdisks page)."""
        table = await vdisk_table(self.spec, self.paths)
        return {row["id"]: row["serving_node"] for row in table}

    async def wait_serving(self, expected: dict[str, int], timeout: float) -> dict[str, int | None]:
        """Poll until every vDisk of ``expected`` is served by the node given; returns the
        last view (the caller asserts on it)."""
        serving: dict[str, int | None] = {}
        with trio.move_on_after(timeout):
            while True:
                serving = await self.serving_nodes()
                if all(serving.get(vdisk) == node for vdisk, node in expected.items()):
                    break
                await trio.sleep(0.2)
        return serving


async def login_once(
    host: str, port: int, target: str | None, *, initiator: str = "iqn.2024-01.test:init"
) -> LoginRedirect | LoginFailed | LoginDone:
    """One login exchange on one connection, its outcome as the initiator state machine
    sees it (redirects are not followed)."""
    stream = await trio.open_tcp_stream(host, port)
    try:
        machine = InitiatorLogin(initiator, target, isid=0x80_1234_5600_00)
        framer = PduFramer(receiving_from="target")
        request: LoginRequest = machine.start()
        with trio.fail_after(10):
            while True:
                await stream.send_all(encode_pdu(request))
                response = await _receive_login_response(stream, framer)
                outcome = machine.receive(response)
                if not isinstance(outcome, LoginRequest):
                    return outcome
                request = outcome
    finally:
        await stream.aclose()


async def _receive_login_response(stream: trio.SocketStream, framer: PduFramer) -> LoginResponse:
    while True:
        pdu = framer.next_pdu()
        if pdu is not None:
            assert isinstance(pdu, LoginResponse), pdu
            return pdu
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("the portal closed the connection during login")
        framer.feed(data)
