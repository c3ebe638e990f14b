"""Login faults at a real redirector process, armed, listed and cleared live with
`stargate fault add|list|clear --redirector N` (the redirector's HTTP page): refusals with a
chosen status, redirect loops, permanent redirects, slow logins, blackholed logins, and
their triggers; libiscsi's iscsi-inq and the project's initiator as the clients."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from cluster.scenario import Scenario, ScenarioError, perform_step
from cluster.timeline import build_timeline
from initiator.errors import LoginError, RedirectError
from initiator.login_flow import LoginOptions, establish
from iscsicore.login import LoginDone, LoginFailed, LoginRedirect
from iscsicore.pdu import LoginStatus
from iscsicore.portal import Portal
from tests.helpers.procs import ProcessReaper
from tests.peers.tools import PeerToolError, iscsi_inq, iscsi_url
from tests.redirector.cluster import PORT, TestCluster, login_once
from topology.naming import target_name_for

TARGET = target_name_for("vm1-0")
OTHER = target_name_for("vm1-1")


def _run_fault(directory: Path, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stargate", "fault", *words, "--dir", str(directory)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _fault(directory: Path, *words: str, where: tuple[str, ...] = ("--redirector", "1")) -> str:
    completed = _run_fault(directory, *words, *where)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """One node (CVM and redirector) with a VM of two vDisks, shared by this module's tests,
    each of which clears the faults it armed."""
    reaper = ProcessReaper(log_dir=tmp_path_factory.mktemp("process-logs"))
    try:
        directory = tmp_path_factory.mktemp("redirector-faults") / "cluster"
        cluster = TestCluster.create(directory, reaper, nodes=1, stable_window=1)
        cluster.create_vm("vm1", disks=2, size="16M", home=1)
        cluster.start_stargates()
        cluster.start_redirector(1)
        yield cluster
    finally:
        reaper.reap_all()  # by PID


@pytest.fixture
def redirector(cluster: TestCluster) -> Iterator[TestCluster]:
    yield cluster
    _fault(cluster.directory, "clear")


def _portal(cluster: TestCluster) -> Portal:
    return Portal(cluster.node(1).redirector_address, PORT)


async def _login(cluster: TestCluster, target: str = TARGET, timeout: float = 10.0) -> int:
    """Log in through the redirector (following redirects); the number of redirects."""
    options = LoginOptions(login_timeout=timeout)
    established = await establish(_portal(cluster), target, options)
    await established.connection.aclose()
    return established.redirects


async def _login_once(cluster: TestCluster, target: str = TARGET) -> object:
    return await login_once(cluster.node(1).redirector_address, PORT, target)


def _inq_url(cluster: TestCluster, target: str = TARGET) -> str:
    return iscsi_url(cluster.node(1).redirector_address, PORT, target, 0)


def test_refusal_then_redirect_loop_then_behaves(redirector: TestCluster) -> None:
    directory = redirector.directory
    _fault(directory, "add", "login_fail", "--vdisk", "vm1-0", "--status", "0x0301",
           "--count", "1")  # fmt: skip
    with pytest.raises(LoginError, match=r"(?i)0x0301|service.unavailable"):
        trio.run(_login, redirector)
    assert trio.run(_login, redirector) == 1  # count=1: the next login goes to the CVM

    _fault(directory, "add", "login_redirect", "--portal", "self")
    with pytest.raises(RedirectError, match="loop"):
        trio.run(_login, redirector)
    assert "cleared 1" in _fault(directory, "clear")
    assert trio.run(_login, redirector) == 1


@pytest.mark.parametrize(
    "status",
    [
        LoginStatus.SERVICE_UNAVAILABLE,
        LoginStatus.OUT_OF_RESOURCES,
        LoginStatus.AUTHENTICATION_FAILURE,
        LoginStatus.NOT_FOUND,
    ],
)
def test_refusal_carries_the_chosen_status(redirector: TestCluster, status: LoginStatus) -> None:
    _fault(redirector.directory, "add", "login_fail", "--status", f"{status:#06x}", "--count", "1")
    outcome = trio.run(_login_once, redirector)
    assert isinstance(outcome, LoginFailed)
    assert outcome.status is status
    assert isinstance(trio.run(_login_once, redirector), LoginRedirect)  # spent


def test_iscsi_inq_names_a_service_unavailable_refusal(
    redirector: TestCluster, require_tool: Callable[..., str]
) -> None:
    require_tool("iscsi-inq")
    _fault(redirector.directory, "add", "login_fail", "--status", "0x0301")
    with pytest.raises(PeerToolError) as failure:
        iscsi_inq(_inq_url(redirector), timeout=30)
    assert "unavailable" in str(failure.value).lower(), failure.value
    _fault(redirector.directory, "clear")
    assert iscsi_inq(_inq_url(redirector), timeout=30).vendor


def test_iscsi_inq_through_a_slow_redirector_waits_the_delay(
    redirector: TestCluster, require_tool: Callable[..., str]
) -> None:
    require_tool("iscsi-inq")
    directory = redirector.directory
    armed = _fault(directory, "add", "login_delay", "--delay", "2", "--vdisk", "vm1-0")
    assert "redirector 1: armed" in armed
    listing = _fault(directory, "list", where=())  # every CVM and redirector
    assert "redirector 1" in listing and "login_delay" in listing and "delay=2.0 s" in listing
    started = time.monotonic()
    assert iscsi_inq(_inq_url(redirector), timeout=60).vendor
    assert time.monotonic() - started >= 2.0
    (page,) = json.loads(_fault(directory, "list", "--json")).values()
    (fault,) = page["faults"]
    assert (fault["kind"], fault["vdisk"], fault["fired"]) == ("login_delay", "vm1-0", 1)
    assert page["events"][-1]["kind"] == "login_delay"
    # The firing is in the vDisk's lane of the cluster's timeline, from the redirector.
    lane = build_timeline(directory)["vdisks"]["vm1-0"]
    assert any(
        (record["kind"], record["node"]) == ("login_delay", "redirector-1")
        for record in lane["faults"]
    )
    assert trio.run(_login, redirector, OTHER) == 1  # another vDisk: no delay
    assert "cleared 1" in _fault(directory, "clear")


def test_slow_login_from_a_distribution(redirector: TestCluster) -> None:
    _fault(redirector.directory, "add", "login_delay", "--delay", "uniform:1:1.5", "--count", "2")
    for _ in range(2):
        started = time.monotonic()
        assert trio.run(_login, redirector) == 1
        assert time.monotonic() - started >= 1.0


def test_permanent_redirect_and_probability(redirector: TestCluster) -> None:
    directory = redirector.directory
    cvm = redirector.node(1)
    _fault(directory, "add", "login_redirect", "--status", "0x0102",
           "--portal", f"{cvm.cvm_address}:{PORT}", "--count", "1")  # fmt: skip
    outcome = trio.run(_login_once, redirector)
    assert isinstance(outcome, LoginRedirect) and outcome.permanent
    assert trio.run(_login, redirector) == 1  # spent: the usual temporary redirect

    _fault(directory, "add", "login_fail", "--status", "0x0302", "--probability", "0.5",
           "--seed", "7")  # fmt: skip
    outcomes = [type(trio.run(_login_once, redirector)) for _ in range(16)]
    assert set(outcomes) == {LoginFailed, LoginRedirect}, outcomes


def test_blackholed_redirector_never_answers_until_cleared(redirector: TestCluster) -> None:
    directory = redirector.directory
    _fault(directory, "add", "drop_connection", "--mode", "blackhole", "--vdisk", "vm1-0")
    started = time.monotonic()
    with pytest.raises(LoginError, match="timed out"):
        trio.run(_login, redirector, TARGET, 2.0)
    assert time.monotonic() - started >= 2.0
    assert trio.run(_login, redirector, OTHER) == 1  # another vDisk: answered

    _fault(directory, "clear")
    assert trio.run(_login, redirector) == 1

    _fault(directory, "add", "drop_connection", "--mode", "reset", "--count", "1")
    with pytest.raises((ConnectionError, OSError, trio.BrokenResourceError)):
        trio.run(_login_once, redirector)
    assert isinstance(trio.run(_login_once, redirector), LoginRedirect)


def test_bad_input_gets_a_message_not_a_traceback(redirector: TestCluster) -> None:
    directory = redirector.directory
    cases = {
        ("add", "busy", "--redirector", "1"): "a redirector only answers logins",
        ("add", "login_fail", "--status", "0x0101", "--redirector", "1"): "0x02xx",
        ("add", "login_redirect", "--redirector", "1"): "needs a portal",
        ("add", "login_redirect", "--portal", "self", "--node", "1"): "for a redirector",
        ("add", "login_delay", "--delay", "soon", "--redirector", "1"): "bad delay",
        ("add", "drop_connection", "--lba", "x", "--redirector", "1"): "bad --lba",
        ("add", "login_fail", "--status", "many", "--redirector", "1"): "bad fault",
        ("list", "--redirector", "9"): "9",
    }
    for words, message in cases.items():
        completed = _run_fault(directory, *words)
        assert completed.returncode != 0, words
        assert message in completed.stderr, (words, completed.stderr)
        assert "Traceback" not in completed.stderr, completed.stderr
    listing = json.loads(_fault(directory, "list", "--json"))
    assert all(not page["faults"] for page in listing.values())


def test_list_and_clear_reach_cvms_and_redirectors(redirector: TestCluster) -> None:
    directory = redirector.directory
    _fault(directory, "add", "login_delay", "--delay", "0.1", "--vdisk", "vm1-1")
    _fault(directory, "add", "busy", "--vdisk", "vm1-0", "--count", "3", where=("--node", "1"))
    listing = json.loads(_fault(directory, "list", "--json", where=()))
    assert sorted(page["page"] for page in listing.values()) == ["cvm 1", "redirector 1"]
    kinds = sorted(fault["kind"] for page in listing.values() for fault in page["faults"])
    assert kinds == ["busy", "login_delay"]
    assert "cleared" in _fault(directory, "clear", where=())
    listing = json.loads(_fault(directory, "list", "--json", where=()))
    assert all(not page["faults"] for page in listing.values())


def test_logins_before_and_after_are_ordinary(redirector: TestCluster) -> None:
    outcome = trio.run(_login_once, redirector)
    assert isinstance(outcome, LoginRedirect) and not outcome.permanent
    assert isinstance(trio.run(login_once, redirector.node(1).cvm_address, PORT, TARGET), LoginDone)


SCENARIO_STEPS = """
[[vm]]
name = "vm1"
home = 1

[[step]]
at = 1
redirector = 1
fault = { kind = "login_fail", vdisk = "vm1-0", status = "0x0302", count = 1 }

[[step]]
at = 2
clear_faults = true
"""


def test_scenario_steps_arm_and_clear_redirector_faults(redirector: TestCluster) -> None:
    scenario = Scenario.from_dict(tomllib.loads(SCENARIO_STEPS))
    arm, clear = scenario.steps
    assert arm.describe() == "fault login_fail on redirector 1"
    # Fault steps need only the spec and the directory (its control token).
    supervisor = SimpleNamespace(spec=redirector.spec, directory=redirector.directory)
    assert trio.run(perform_step, arm, supervisor) == "redirector 1: 200"
    outcome = trio.run(_login_once, redirector)
    assert isinstance(outcome, LoginFailed) and outcome.status is LoginStatus.OUT_OF_RESOURCES
    _fault(redirector.directory, "add", "login_delay", "--delay", "5")
    assert "redirector 1: 200" in trio.run(perform_step, clear, supervisor)  # and the CVM
    listing = json.loads(_fault(redirector.directory, "list", "--json", where=()))
    assert all(not page["faults"] for page in listing.values())


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"redirector": 1, "fault": {"kind": "busy"}}, "only answers logins"),
        ({"redirector": 1, "node": 1, "fault": {"kind": "login_delay"}}, "redirector or node"),
        ({"node": 1, "fault": {"kind": "login_redirect", "portal": "self"}}, "for a redirector"),
    ],
)
def test_scenario_rejects_faults_a_redirector_cannot_apply(
    step: dict[str, object], message: str
) -> None:
    document = {"vm": [{"name": "v", "home": 1}], "step": [{"at": 1, **step}]}
    with pytest.raises(ScenarioError, match=message):
        Scenario.from_dict(document)
