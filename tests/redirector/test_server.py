"""The redirector's portal, in process, against real cluster-mode stargate processes:
redirects (0x0101 with the CVM's advertised address), refusals (0x0203, 0x0301), discovery
answered with the redirector's own portal, and clients that misbehave."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.provision import create_vm
from initiator.discovery import send_targets
from initiator.monitor import PortalMonitor
from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.keys import encode_text
from iscsicore.login import LoginDone, LoginFailed, LoginRedirect
from iscsicore.pdu import (
    LoginRequest,
    LoginResponse,
    LoginStatus,
    LogoutResponse,
    NopIn,
    Pdu,
    Reject,
    TextResponse,
)
from iscsicore.portal import Portal
from redirector.app import Redirector
from redirector.config import RedirectorConfig, Timers
from redirector.log import redirector_logger
from redirector.policy import PlacementMode
from redirector.server import RedirectorServer
from tests.conftest import require_tool
from tests.helpers.procs import ProcessReaper
from tests.iscsicore.strategies import initiator_pdus
from tests.redirector.cluster import PORT, TestCluster, login_once, make_spec
from topology.settings import HealthChecks
from topology.spec import ClusterSpec, NodeSpec

IQN = "iqn.2010-06.com.nutanix:vmdisk-"


def login_requests_with_keys() -> st.SearchStrategy[LoginRequest]:
    """Login Requests that name real things (this cluster's vDisk, both session types),
    so that arbitrary sequences reach the redirect, refusal and discovery paths."""
    pairs = st.lists(
        st.sampled_from(
            [
                ("InitiatorName", "iqn.2024-01.test:fuzz"),
                ("TargetName", IQN + "web-0"),
                ("TargetName", IQN + "nope"),
                ("SessionType", "Discovery"),
                ("SessionType", "Normal"),
                ("AuthMethod", "None"),
                ("HeaderDigest", "None"),
                ("MaxRecvDataSegmentLength", "65536"),
            ]
        ),
        max_size=6,
    )
    return st.builds(
        lambda keys, transit, csg, nsg, cmd_sn: LoginRequest(
            transit=transit, csg=csg, nsg=nsg, isid=0x80_0000_0000_01, cmd_sn=cmd_sn,
            data=encode_text(keys),
        ),
        pairs,
        st.booleans(),
        st.sampled_from([0, 1, 3]),
        st.sampled_from([0, 1, 3]),
        st.integers(0, 3),
    )  # fmt: skip


def complete_login(session_type: str) -> LoginRequest:
    """A one-PDU login straight to the full feature phase."""
    keys = [("InitiatorName", "iqn.2024-01.test:fuzz"), ("SessionType", session_type)]
    if session_type == "Normal":
        keys.append(("TargetName", IQN + "web-0"))
    return LoginRequest(transit=True, csg=1, nsg=3, isid=0x80_0000_0000_02, data=encode_text(keys))


HEALTH = HealthChecks(nop_interval=0.5, nop_timeout=2.0, connect_timeout=2.0)
TIMERS = Timers(health=HEALTH, login_timeout=1.0, startup_grace=1.0)


@pytest.fixture
def cluster(tmp_path: Path, process_reaper: ProcessReaper) -> TestCluster:
    cluster = TestCluster.create(tmp_path / "cluster", process_reaper, nodes=2)
    cluster.create_vm("web", disks=2, size="16M")
    return cluster


@asynccontextmanager
async def running_redirector(
    cluster: TestCluster, node_id: int = 1, timers: Timers = TIMERS
) -> AsyncIterator[Redirector]:
    config = RedirectorConfig(
        cluster.directory, ClusterSpec.load(cluster.directory), node_id, timers
    )
    redirector = Redirector(config, redirector_logger(cluster.redirector_log(node_id)))
    async with trio.open_nursery() as nursery:
        await nursery.start(redirector.run)
        yield redirector
        nursery.cancel_scope.cancel()


async def test_login_is_redirected_to_the_local_stargate(cluster: TestCluster) -> None:
    cluster.start_stargates()
    local = cluster.node(1)
    async with running_redirector(cluster):
        outcome = await login_once(local.redirector_address, PORT, IQN + "web-0")
    assert isinstance(outcome, LoginRedirect)
    assert (outcome.host, outcome.port, outcome.permanent) == (local.cvm_address, PORT, False)
    assert outcome.tpgt == 1
    log = cluster.redirector_log(1).read_text()
    assert f"Redirecting target {IQN}web-0 to {local.cvm_address}:{PORT}" in log


async def test_target_address_is_the_advertised_one(cluster: TestCluster) -> None:
    """NAT / a QEMU guest: initiators are sent to the CVM's advertised address."""
    spec = ClusterSpec.load(cluster.directory)
    first = spec.node(1)
    advertised = replace(first, cvm_advertised_address="10.9.8.7", cvm_advertised_port=13261)
    nodes: list[NodeSpec] = [advertised, *spec.nodes[1:]]
    replace(spec, nodes=nodes).save(cluster.directory)
    cluster.spec = ClusterSpec.load(cluster.directory)
    cluster.start_stargates()
    async with running_redirector(cluster):
        outcome = await login_once(first.redirector_address, PORT, IQN + "web-1")
    assert isinstance(outcome, LoginRedirect)
    assert (outcome.host, outcome.port) == ("10.9.8.7", 13261)


async def test_unknown_vdisk_is_not_found(cluster: TestCluster) -> None:
    cluster.start_stargates()
    async with running_redirector(cluster):
        outcome = await login_once(cluster.node(1).redirector_address, PORT, IQN + "nope")
    assert isinstance(outcome, LoginFailed)
    assert outcome.raw_status == LoginStatus.NOT_FOUND == 0x0203


async def test_no_healthy_stargate_means_service_unavailable(cluster: TestCluster) -> None:
    # No stargate runs: once the startup grace is over every one is down.
    async with running_redirector(cluster) as redirector:
        await trio.sleep(TIMERS.startup_grace + 0.3)
        assert redirector.policy.healthy_nodes() == []
        outcome = await login_once(cluster.node(1).redirector_address, PORT, IQN + "web-0")
    assert isinstance(outcome, LoginFailed)
    assert outcome.raw_status == LoginStatus.SERVICE_UNAVAILABLE == 0x0301


async def test_a_vdisk_created_later_is_redirected_too(cluster: TestCluster) -> None:
    cluster.start_stargates()
    async with running_redirector(cluster):
        cluster.create_vm("late", disks=1, size="8M")
        outcome = await login_once(cluster.node(1).redirector_address, PORT, IQN + "late-0")
    assert isinstance(outcome, LoginRedirect)


async def test_a_login_right_after_startup_waits_for_the_local_verdict(
    cluster: TestCluster,
) -> None:
    """`cluster up` then an immediate login: the local stargate, slower to answer than a
    remote one, still gets the vDisk."""
    cluster.start_stargate(2)
    timers = replace(TIMERS, startup_grace=20.0, login_timeout=20.0)
    async with running_redirector(cluster, timers=timers) as redirector:
        with trio.fail_after(10):
            while not redirector.policy.is_healthy("2"):
                await trio.sleep(0.05)
        async with trio.open_nursery() as nursery:
            outcome: list[object] = []

            async def log_in() -> None:
                address = cluster.node(1).redirector_address
                outcome.append(await login_once(address, PORT, IQN + "web-0"))

            nursery.start_soon(log_in)
            await trio.sleep(0.5)
            await trio.to_thread.run_sync(cluster.start_stargate, 1)
    (redirect,) = outcome
    assert isinstance(redirect, LoginRedirect)
    assert redirect.host == cluster.node(1).cvm_address


async def test_discovery_is_answered_by_the_redirector(cluster: TestCluster) -> None:
    iscsi_ls = require_tool("iscsi-ls", why="libiscsi's discovery client")
    cluster.start_stargates()
    node = cluster.node(1)
    async with running_redirector(cluster):
        result = await trio.run_process(
            [iscsi_ls, f"iscsi://{node.redirector_address}:{PORT}"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    listing = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    found = re.findall(r"Target:(\S+) Portal:(\S+)", listing)
    assert sorted(found) == [
        (f"{IQN}web-0", f"{node.redirector_address}:{PORT},1"),
        (f"{IQN}web-1", f"{node.redirector_address}:{PORT},1"),
    ]


async def test_libiscsi_follows_the_redirect_to_the_stargate(cluster: TestCluster) -> None:
    iscsi_inq = require_tool("iscsi-inq", why="libiscsi follows 0x0101")
    iscsi_ls = require_tool("iscsi-ls", why="libiscsi's discovery client")
    cluster.start_stargates()
    node = cluster.node(1)
    async with running_redirector(cluster):
        url = f"iscsi://{node.redirector_address}:{PORT}/{IQN}web-0/0"
        inquiry = await trio.run_process(
            [iscsi_inq, url], capture_stdout=True, capture_stderr=True, check=False
        )
        # -s asks each target for its LUNs: a login per vDisk, each followed to a stargate.
        sizes = await trio.run_process(
            [iscsi_ls, "-s", f"iscsi://{node.redirector_address}:{PORT}"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert inquiry.returncode == 0, inquiry.stderr.decode()
    assert "DIRECT_ACCESS" in inquiry.stdout.decode()
    assert sizes.stdout.decode().count("Lun:0") == 2, sizes.stdout.decode()
    serving = await cluster.serving_nodes()
    assert serving["web-0"] == 1


async def test_discovery_session_answers_nop_out(cluster: TestCluster) -> None:
    """The redirector's discovery sessions stay usable as health checks of the redirector."""
    node = cluster.node(1)
    async with running_redirector(cluster):
        monitor = PortalMonitor(Portal(node.redirector_address, PORT), interval=0.1, timeout=2.0)
        assert await monitor.check_once(), monitor.error


async def test_misbehaving_clients_do_not_hold_up_others(cluster: TestCluster) -> None:
    cluster.start_stargates()
    node = cluster.node(1)
    async with running_redirector(cluster) as redirector:
        silent = await trio.open_tcp_stream(node.redirector_address, PORT)
        garbage = await trio.open_tcp_stream(node.redirector_address, PORT)
        await garbage.send_all(b"\xff" * 48 + b"GET / HTTP/1.1\r\n\r\n")
        not_login = await trio.open_tcp_stream(node.redirector_address, PORT)
        await not_login.send_all(bytes([0x00]) + bytes(47))  # a NOP-Out before any login
        with trio.fail_after(3):
            outcome = await login_once(node.redirector_address, PORT, IQN + "web-0")
        assert isinstance(outcome, LoginRedirect)
        # The garbage sender and the NOP-Out sender are dropped; the silent one after the
        # login timeout.
        with trio.fail_after(TIMERS.login_timeout + 3):
            assert await garbage.receive_some(4096) == b""
            answer = await not_login.receive_some(4096)
            assert answer[:1] == b"\x3f"  # a Reject
            assert await silent.receive_some(4096) == b""
        assert redirector.server.stats.bad_clients == 2
        for stream in (silent, garbage, not_login):
            await stream.aclose()


async def test_discovery_with_the_project_initiator(cluster: TestCluster) -> None:
    """A complete discovery login through the shared state machine, then the session's
    SendTargets answer (iscsicore.text) lists the redirector's own portal."""
    node = cluster.node(1)
    async with running_redirector(cluster):
        outcome = await login_once(node.redirector_address, PORT, None)
        assert isinstance(outcome, LoginDone)
        targets = await send_targets(Portal(node.redirector_address, PORT))
    names = sorted(target.name for target in targets)
    assert names == [f"{IQN}web-0", f"{IQN}web-1"]
    for target in targets:
        assert target.portals == [f"{node.redirector_address}:{PORT},1"]


# -- arbitrary input ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory: pytest.TempPathFactory) -> RedirectorServer:
    """A redirector whose stargates are all unknown (never checked): logins end in 0x0301,
    discovery sessions complete. No sockets: connections are memory streams."""
    directory = tmp_path_factory.mktemp("offline-cluster")
    spec = make_spec(directory, 2, stable_window=5.0)
    create_vm(directory, "web", home_node=1, disks=1, size="1M")
    config = RedirectorConfig(directory, spec, 1, replace(TIMERS, login_timeout=0.5))
    logger = redirector_logger(directory / "redirector.log")
    redirector = Redirector(config, logger)
    return redirector.server


async def _converse(server: RedirectorServer, data: bytes) -> bytes:
    client, redirector_end = trio.testing.memory_stream_pair()
    answers = bytearray()

    async def client_side() -> None:
        await client.send_all(data)
        await client.send_eof()
        while chunk := await client.receive_some(65536):
            answers.extend(chunk)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_side)
            await server.handle_connection(redirector_end)  # closes its end: the client sees EOF
    await client.aclose()
    return bytes(answers)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([[], [complete_login("Discovery")], [complete_login("Normal")]]),
    st.lists(st.one_of(login_requests_with_keys(), initiator_pdus()), max_size=6),
    st.binary(max_size=64),
)
def test_arbitrary_input_never_breaks_a_connection_task(
    offline_server: RedirectorServer, login: list[Pdu], pdus: list[Pdu], garbage: bytes
) -> None:
    """Whatever an initiator sends, after a complete login or not, the connection task ends
    by itself (no exception, no hang) and every answer is a well-formed target PDU."""
    data = b"".join(encode_pdu(pdu) for pdu in [*login, *pdus]) + garbage
    answers = trio.run(_converse, offline_server, data)
    framer = PduFramer(receiving_from="target", max_recv_data_segment_length=1 << 24)
    framer.feed(answers)
    while (pdu := framer.next_pdu()) is not None:
        assert isinstance(pdu, LoginResponse | Reject | TextResponse | NopIn | LogoutResponse)


# -- the process ----------------------------------------------------------------------------


def test_process_ends_cleanly_on_sigterm(cluster: TestCluster) -> None:
    process = cluster.start_redirector(1)
    os.kill(process.pid, signal.SIGTERM)
    assert process.popen.wait(timeout=10) == 0, process.log_tail()
    assert "Traceback" not in process.log_text()


def test_process_refuses_an_unknown_node(cluster: TestCluster) -> None:
    argv = [sys.executable, "-m", "redirector", "--dir", str(cluster.directory), "--node", "9"]
    process = cluster.reaper.spawn(argv, name="redirector-9")
    assert process.popen.wait(timeout=30) == 2
    assert "no node 9" in process.log_text()


def test_placement_mode_and_stable_window_come_from_the_spec(cluster: TestCluster) -> None:
    spec = replace(ClusterSpec.load(cluster.directory), placement="random", stable_window=42.0)
    spec.save(cluster.directory)
    config = RedirectorConfig.load(cluster.directory, 2)
    redirector = Redirector(config, redirector_logger(cluster.redirector_log(2)))
    assert redirector.policy.mode is PlacementMode.RANDOM
    assert redirector.policy.stable_window == 42.0
    assert (redirector.policy.local, redirector.policy.nodes) == ("2", ["1", "2"])
