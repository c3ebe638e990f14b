"""A `stargate target --http` process's 2009-style pages over real HTTP, after real I/O
from libiscsi (qemu-io): /h/traces holds the last operations with their phases, /h/vars
the counters filtered by a regex, /h/gflags the tunables, some set live (and used: the trace
depth, the login throttle), others refused with the reason."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from control.http import HttpResponse, http_request
from tests.conftest import require_tool
from tests.helpers.net import free_port
from tests.helpers.procs import ProcessReaper
from tests.peers.tools import iscsi_url
from topology.naming import target_name_for

HOST = "127.0.0.1"
TOKEN = "support-pages-token-0123456789"
WRITE_OPCODES = {0x2A, 0x8A}
READ_OPCODES = {0x28, 0x88}


@dataclass
class Target:
    port: int
    base: str

    async def get(self, path: str) -> HttpResponse:
        return await http_request("GET", self.base + path)

    async def post(self, path: str, token: str | None = TOKEN) -> HttpResponse:
        return await http_request("POST", self.base + path, token=token)

    async def traces(self, query: str = "") -> list[dict[str, float]]:
        response = await self.get(f"/h/traces?format=json&vdisk=vd1{query}")
        assert response.status == 200, response.body
        entries: list[dict[str, float]] = response.json_body()["vdisks"]["vd1"]
        return entries

    def qemu_io(self, *commands: str) -> None:
        qemu_io = require_tool("qemu-io", why="libiscsi's client")
        argv = [qemu_io, "-f", "raw"]
        for command in commands:
            argv += ["-c", command]
        url = iscsi_url(HOST, self.port, target_name_for("vd1"), 0)
        result = subprocess.run(
            [*argv, url], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0 and "failed" not in result.stdout, result


@pytest.fixture
def target(process_reaper: ProcessReaper, tmp_path: Path) -> Target:
    token_file = tmp_path / "page.token"
    token_file.write_text(TOKEN + "\n")
    port, http_port = free_port(HOST), free_port(HOST)
    argv = [sys.executable, "-m", "stargate", "target", "--portal", f"{HOST}:{port}"]
    argv += ["--http", f"{HOST}:{http_port}", "--vdisk", "vd1:16M", "--memory"]
    argv += ["--control-token-file", str(token_file)]
    process = process_reaper.spawn(argv, name="stargate")
    process.wait_for_port(HOST, port, timeout=30)
    process.wait_for_port(HOST, http_port, timeout=30)
    return Target(port, f"http://{HOST}:{http_port}")


async def test_traces_after_real_io_and_their_depth_set_live(target: Target) -> None:
    started = time.time()
    await trio.to_thread.run_sync(
        lambda: target.qemu_io("write -P 7 0 4k", "write -P 8 4k 4k", "read -P 8 4k 4k")
    )
    entries = await target.traces()
    writes = [e for e in entries if e["opcode"] in WRITE_OPCODES]
    reads = [e for e in entries if e["opcode"] in READ_OPCODES and e["bytes"] == 4096]
    assert len(writes) == 2 and reads, entries
    # Newest first: the read came after the writes (qemu-io's closing SYNCHRONIZE CACHE
    # after both).
    assert entries.index(reads[-1]) < min(entries.index(write) for write in writes)
    assert entries[0]["opcode"] == 0x35, entries[0]
    for entry in [*writes, *reads]:
        assert entry["bytes"] == 4096 and entry["status"] == 0
        assert started - 1 <= entry["received"] <= time.time() + 1
        phases = entry["queued_us"] + entry["executed_us"] + entry["status_us"]
        assert min(entry["queued_us"], entry["executed_us"], entry["status_us"]) >= 0
        assert phases == pytest.approx(entry["latency_us"], abs=0.01)
        assert 0 < entry["latency_us"] < 5_000_000
    assert len(await target.traces("&n=1")) == 1

    page = await target.get("/h/traces?vdisk=vd1")
    assert page.status == 200 and page.content_type.startswith("text/html")
    assert b"<h2>vd1</h2>" in page.body and b"0x2a" in page.body
    assert (await target.get("/h/traces?vdisk=nope")).status == 404
    assert (await target.get("/h/traces?n=0")).status == 400

    # Depth 2, live: the ring keeps the 2 newest of what comes next.
    set_depth = await target.post("/h/gflags?trace_depth=2")
    assert set_depth.status == 200, set_depth.body
    await trio.to_thread.run_sync(lambda: target.qemu_io("write -P 9 8k 4k", "read 8k 4k"))
    entries = await target.traces()
    assert len(entries) == 2, entries
    assert (await target.post("/h/gflags?trace_depth=0")).status == 200
    await trio.to_thread.run_sync(lambda: target.qemu_io("read 0 4k"))
    assert await target.traces() == []
    refused = await target.post("/h/gflags?trace_depth=-3")
    assert refused.status == 400 and b"trace_depth" in refused.body


async def test_vars_filtered_by_regex(target: Target) -> None:
    await trio.to_thread.run_sync(
        lambda: target.qemu_io("write -P 1 0 8k", "read 0 4k", "read 4k 4k", "read 0 8k")
    )
    response = await target.get("/h/vars?regex=^stargate/vdisk/vd1/(read|write)_")
    assert response.status == 200 and response.content_type.startswith("text/plain")
    lines = response.body.decode().splitlines()
    counters = {name: int(value) for name, value in (line.split(" ") for line in lines)}
    assert set(counters) == {
        "stargate/vdisk/vd1/read_ops",
        "stargate/vdisk/vd1/read_bytes",
        "stargate/vdisk/vd1/write_ops",
        "stargate/vdisk/vd1/write_bytes",
    }
    assert counters["stargate/vdisk/vd1/write_bytes"] >= 8192
    assert counters["stargate/vdisk/vd1/read_ops"] >= 3  # qemu-io also reads at open
    everything = (await target.get("/h/vars")).body.decode()
    assert re.search(r"^stargate/vdisk/total/read_ops \d+$", everything, re.MULTILINE)
    assert re.search(r"^stargate/queue/depth 128$", everything, re.MULTILINE)
    as_json = (await target.get("/h/vars?regex=write_bytes&format=json")).json_body()
    assert as_json["stargate/vdisk/vd1/write_bytes"] == counters["stargate/vdisk/vd1/write_bytes"]
    for bad in ("(", "[a-", "*x"):
        refused = await target.get(f"/h/vars?regex={bad}")
        assert refused.status == 400 and b"bad regex" in refused.body, refused.body
    assert (await target.get("/h/vars?format=yaml")).status == 400


async def test_gflags_show_every_tunable_and_refuse_what_cannot_change(target: Target) -> None:
    document = (await target.get("/h/gflags?format=json")).json_body()
    flags = {flag["name"]: flag for flag in document["flags"]}
    expected = {"queue_depth", "turn_budget", "busy_poll_us", "login_timeout", "nop_interval"}
    assert expected | {"login_throttle_first_delay", "trace_depth"} <= set(flags)
    assert flags["queue_depth"]["value"] == 128 and not flags["queue_depth"]["settable"]
    assert flags["busy_poll_us"]["settable"]
    accept_json = await http_request("GET", target.base + "/h/gflags")
    assert accept_json.content_type.startswith("text/html") and b"queue_depth" in accept_json.body

    fixed = await target.post("/h/gflags?queue_depth=4")
    assert fixed.status == 400
    assert "queue_depth cannot change while running" in fixed.json_body()["error"]
    assert (await target.post("/h/gflags?busy_poll_us=abc")).status == 400
    assert (await target.post("/h/gflags?busy_poll_us=20", token=None)).status == 401
    assert (await target.post("/h/gflags?busy_poll_us=20", token="wrong")).status == 403
    assert (await target.get("/h/gflags?busy_poll_us=20")).status == 405
    assert (await target.post("/h/gflags")).status == 400
    changed = await target.post("/h/gflags?busy_poll_us=20&nop_interval=2.5")
    assert changed.json_body()["set"] == {"busy_poll_us": 20.0, "nop_interval": 2.5}

    # The login timeout, live: a connection that never logs in is closed after the new
    # 1 s (15 s by default).
    assert (await target.post("/h/gflags?login_timeout=1")).status == 200
    stream = await trio.open_tcp_stream(HOST, target.port)
    began = trio.current_time()
    with trio.fail_after(10):
        while await stream.receive_some(4096):
            pass
    await stream.aclose()
    assert 0.9 <= trio.current_time() - began < 5
