"""The redirector's 2009-style pages against real processes (2-node cluster: real stargate
and redirector processes, real HTTP): /h/gflags shows its tunables and changes the health
knobs and the stable window live, and the running process really uses the new values;
/h/vars counts its redirects, failovers and failbacks; refusals name the flag."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from control.control_token import cluster_token
from control.http import HttpResponse, http_request
from initiator.session import SessionConfig
from initiator.vm import VM
from iscsicore.portal import Portal
from redirector.config import redirector_page_url
from tests.cluster.conftest import run_cli
from tests.helpers.procs import ProcessReaper
from tests.redirector.cluster import HTTP_PORT, PORT, START_TIMEOUT, TestCluster
from topology.settings import HealthChecks
from topology.spec import ClusterSpec

pytestmark = pytest.mark.slow

SLOW_NOPS = HealthChecks(nop_interval=8.0, nop_timeout=2.0, misses=1, connect_timeout=2.0)
REDIRECTOR_OPTIONS = ("--startup-grace", "2")
INITIATOR = SessionConfig(nop_interval=1.0, nop_timeout=3.0, replacement_timeout=60.0)
LONG_WINDOW = 600.0


class Pages:
    def __init__(self, cluster: TestCluster, node_id: int) -> None:
        node = cluster.node(node_id)
        # The page opens just after the iSCSI portal the fixture waited for.
        cluster.redirectors[node_id].wait_for_port(
            node.redirector_address, HTTP_PORT, timeout=START_TIMEOUT
        )
        self.base = redirector_page_url(node)
        self.token = cluster_token(cluster.directory)

    async def get(self, path: str) -> HttpResponse:
        return await http_request("GET", self.base + path)

    async def post(self, path: str, *, token: str | None = "") -> HttpResponse:
        return await http_request(
            "POST", self.base + path, token=self.token if token == "" else token
        )

    async def flags(self) -> dict[str, object]:
        response = await self.get("/h/gflags?format=json")
        assert response.status == 200, response.body
        return {flag["name"]: flag["value"] for flag in response.json_body()["flags"]}

    async def vars(self, regex: str = "") -> dict[str, float]:
        response = await self.get(f"/h/vars?regex={regex}")
        assert response.status == 200, response.body
        pairs = (line.split(" ") for line in response.body.decode().splitlines())
        return {name: float(value) for name, value in pairs}

    async def wait_var(self, name: str, wanted: float, timeout: float) -> float:
        """Seconds until counter ``name`` reaches ``wanted``; fails after ``timeout``."""
        started = trio.current_time()
        with trio.fail_after(timeout):
            while (await self.vars(name)).get(name, -1.0) < wanted:
                await trio.sleep(0.1)
        return trio.current_time() - started


async def test_health_knobs_change_live_and_are_used(
    tmp_path: Path, process_reaper: ProcessReaper
) -> None:
    cluster = TestCluster.create(tmp_path / "cluster", process_reaper, nodes=2, health=SLOW_NOPS)
    cluster.start_stargates()
    cluster.start_redirector(1, *REDIRECTOR_OPTIONS)
    pages = Pages(cluster, 1)
    checks = "redirector/node/2/health_checks"
    await pages.wait_var(checks, 1, 15)
    await pages.wait_var("redirector/node/2/healthy", 1, 15)

    # One NOP-Out every 8 s: no second check for seconds.
    await trio.sleep(2.0)
    before = (await pages.vars(checks))[checks]
    assert before <= 2

    # GET cannot change a flag; without the token, 401; a bad value or an unknown flag,
    # 400 naming it; a flag fixed at start, 400 saying why. None of them changed anything.
    refused = await pages.get("/h/gflags?nop_interval=0.2")
    assert refused.status == 405
    assert (await pages.post("/h/gflags?nop_interval=0.2", token=None)).status == 401
    for query, named in [
        ("nop_interval=-1", "nop_interval"),
        ("nop_interval=fast", "nop_interval"),
        ("misses=0", "misses"),
        ("no_such_flag=1", "no_such_flag"),
        ("placement=random", "placement"),
        ("failback=gently", "failback"),
        ("nop_interval=0.2&misses=0", "misses"),  # all or nothing
    ]:
        response = await pages.post(f"/h/gflags?{query}")
        assert response.status == 400, (query, response.body)
        assert named in response.json_body()["error"], response.body
    assert (await pages.flags())["nop_interval"] == SLOW_NOPS.nop_interval

    # Live: the running health checker pings every 0.2 s from its next ping on.
    response = await pages.post("/h/gflags?nop_interval=0.2&nop_timeout=0.3")
    assert response.status == 200, response.body
    assert response.json_body()["set"] == {"nop_interval": 0.2, "nop_timeout": 0.3}
    # The ping already waiting out 8 s must end first (at most 8 s from the last one).
    await pages.wait_var(checks, before + 10, 30)

    # misses: 100 misses in a row before down. A SIGSTOPped stargate 2 stays "up"...
    assert (await pages.post("/h/gflags?misses=100")).status == 200
    cluster.signal_stargate(2, signal.SIGSTOP)
    try:
        await trio.sleep(3.0)  # 6 misses of 0.5 s: down already if misses were 1
        assert (await pages.vars("healthy"))["redirector/node/2/healthy"] == 1
        # ... and is down soon after misses is set to 1 live.
        assert (await pages.post("/h/gflags?misses=1")).status == 200
        with trio.fail_after(5):
            while (await pages.vars("healthy"))["redirector/node/2/healthy"] != 0:
                await trio.sleep(0.1)
    finally:
        cluster.signal_stargate(2, signal.SIGCONT)
    flags = await pages.flags()
    assert flags["misses"] == 1 and flags["nop_interval"] == 0.2

    html = await pages.get("/h/gflags")
    assert html.status == 200 and html.content_type.startswith("text/html")
    assert b"nop_interval" in html.body and b"stable_window" in html.body
    bad_regex = await pages.get("/h/vars?regex=%28unclosed")
    assert bad_regex.status == 400 and b"bad regex" in bad_regex.body


async def test_stable_window_set_live_brings_failback_sooner(
    tmp_path: Path, process_reaper: ProcessReaper
) -> None:
    cluster = TestCluster.create(
        tmp_path / "cluster",
        process_reaper,
        nodes=2,
        stable_window=LONG_WINDOW,
        health=HealthChecks(nop_interval=0.5, nop_timeout=2.0, connect_timeout=2.0),
    )
    cluster.create_vm("vm1", disks=1, size="16M", home=1)
    cluster.start_stargates()
    cluster.start_redirector(1, *REDIRECTOR_OPTIONS)
    pages = Pages(cluster, 1)
    portal = Portal(cluster.node(1).redirector_address, PORT)

    async with VM(portal, config=INITIATOR) as vm:
        device = await vm.attach("vm1-0")
        await device.read(0, 1)
        assert (await cluster.wait_serving({"vm1-0": 1}, 10))["vm1-0"] == 1

        cluster.kill_stargate(1)
        assert (await cluster.wait_serving({"vm1-0": 2}, 30))["vm1-0"] == 2
        await device.read(0, 1)
        cluster.start_stargate(1)
        await pages.wait_var("redirector/node/1/healthy", 1, 20)
        await trio.sleep(3.0)  # with a 600 s window, no failback
        assert (await cluster.serving_nodes())["vm1-0"] == 2
        assert (await pages.vars("failback"))["redirector/failbacks"] == 0

        # `cluster set` records it in cluster.json and sets it on the running redirector.
        result = await trio.to_thread.run_sync(
            lambda: run_cli(
                "cluster", "set", "--dir", str(cluster.directory), "--stable-window", "1"
            )
        )
        assert '"1": "set"' in result.stdout, result.stdout
        assert ClusterSpec.load(cluster.directory).stable_window == 1.0
        assert (await pages.flags())["stable_window"] == 1.0
        assert (await cluster.wait_serving({"vm1-0": 1}, 20))["vm1-0"] == 1
        await device.read(0, 1)  # the client follows it home

    # The CVM's own page (port 2009 of its address) has the same support pages.
    cvm = cluster.node(1).http_url
    traces = (await http_request("GET", f"{cvm}/h/traces?vdisk=vm1-0&format=json")).json_body()
    assert any(entry["opcode"] in (0x28, 0x88) for entry in traces["vdisks"]["vm1-0"]), traces
    read_ops = await http_request("GET", f"{cvm}/h/vars?regex=vm1-0/read_ops$")
    name, value = read_ops.body.decode().split()
    assert name == "stargate/vdisk/vm1-0/read_ops" and int(value) >= 1
    cvm_flags = (await http_request("GET", f"{cvm}/h/gflags?format=json")).json_body()
    assert {"queue_depth", "release_timeout", "park_limit", "trace_depth"} <= {
        flag["name"] for flag in cvm_flags["flags"]
    }

    counters = await pages.vars("^redirector/(failovers|failbacks|redirects)$")
    assert counters["redirector/failbacks"] >= 1
    assert counters["redirector/failovers"] >= 1
    assert counters["redirector/redirects"] >= 3  # home, away, home again


async def test_cluster_set_records_and_reports_health_knobs(
    tmp_path: Path, process_reaper: ProcessReaper
) -> None:
    cluster = TestCluster.create(tmp_path / "cluster", process_reaper, nodes=2, health=SLOW_NOPS)
    cluster.start_stargates()
    cluster.start_redirector(1, *REDIRECTOR_OPTIONS)  # node 2's redirector is not running
    pages = Pages(cluster, 1)
    argv = ["cluster", "set", "--dir", str(cluster.directory), "--misses", "4"]
    argv += ["--nop-interval", "0.5", "--failback", "logout"]
    result = await trio.to_thread.run_sync(lambda: run_cli(*argv))
    assert '"1": "set"' in result.stdout, result.stdout
    assert '"2": "not running?' in result.stdout, result.stdout
    spec = ClusterSpec.load(cluster.directory)
    assert spec.health.misses == 4 and spec.health.nop_interval == 0.5
    assert spec.failback.value == "logout"
    flags = await pages.flags()
    assert (flags["misses"], flags["nop_interval"], flags["failback"]) == (4, 0.5, "logout")
    argv = ["cluster", "set", "--dir", str(cluster.directory), "--misses", "0"]
    refused = await trio.to_thread.run_sync(lambda: run_cli(*argv, check=False))
    assert refused.returncode == 2 and "--misses" in refused.stderr, refused.stderr
