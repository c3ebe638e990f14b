"""`stargate demo` run headless, as CI and `./run demo` without a terminal run it: it must
fail over and back, verify the data, print its summary and take the cluster down."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.net import tcp_port_answers
from tests.helpers.procs import ProcessReaper
from topology.spec import ClusterPaths, ClusterSpec, VmRecord

pytestmark = pytest.mark.slow

SUMMARY_RE = re.compile(
    r"^SUMMARY vdisk=(?P<vdisk>\S+) failover_pause_s=(?P<failover>[\d.]+) "
    r"failback_pause_s=(?P<failback>[\d.]+) longest_pause_s=[\d.]+ "
    r"bytes_verified=(?P<verified>\d+) mismatches=(?P<mismatches>\d+) "
    r"errors=(?P<errors>\d+) final_cvm=(?P<final>\d+)$",
    re.MULTILINE,
)


def demo_base_address() -> str:
    """A base in 127.77.0.0/16 (kept for clusters) away from the default nodes 1-3, so a
    developer's own `cluster up` and a parallel run of this test do not collide."""
    return f"127.77.{8 + 4 * (os.getpid() % 60)}.0"


def test_demo_headless(tmp_path: Path, process_reaper: ProcessReaper) -> None:
    directory = tmp_path / "demo"
    demo = process_reaper.spawn(
        [
            sys.executable,
            "-m",
            "cluster.demo",
            "--dir",
            directory,
            "--stable-window",
            "5",
            "--steady-seconds",
            "2",
            "--hold-seconds",
            "2",
            "--base-address",
            demo_base_address(),
        ],
        name="demo",
    )
    returncode = demo.popen.wait(timeout=240)
    output = demo.log_text()
    assert returncode == 0, output

    rows = [match.groupdict() for match in SUMMARY_RE.finditer(output)]
    assert [row["vdisk"] for row in rows] == ["demo-vm-0", "demo-vm-1", "demo-vm-2"], output
    for row in rows:
        assert row["mismatches"] == "0" and row["errors"] == "0", row
        assert int(row["verified"]) > 0, row
        assert row["final"] == "1", row
        assert float(row["failover"]) < 30 and float(row["failback"]) < 30, row
    # Each vDisk moved to a remote CVM, both remote CVMs were used, and all came back.
    moved = re.findall(r"(demo-vm-\d): moved to CVM (\d) \(from CVM 1\)", output)
    assert {vdisk for vdisk, _ in moved} == {"demo-vm-0", "demo-vm-1", "demo-vm-2"}, output
    assert {cvm for _, cvm in moved} == {"2", "3"}, output
    assert len(re.findall(r"demo-vm-\d: moved to CVM 1 \(from CVM [23]\)", output)) == 3
    # The redirector's own AHV-format lines were shown as they happened.
    assert re.search(r"redirector-1: Portal \S+ is down", output)
    assert re.search(r"redirector-1: Failing back target \S+vmdisk-demo-vm-\d", output)
    assert "\x1b[" not in output  # no terminal: no escape sequences, plain lines
    # The cluster is down: nothing answers, no pid file left.
    spec = ClusterSpec.load(directory)
    for node in spec.nodes:
        assert not tcp_port_answers(node.cvm_address, node.cvm_port)
        assert not tcp_port_answers(node.redirector_address, node.redirector_port)
    assert not list(ClusterPaths(directory).run.glob("*.pid"))


def test_demo_with_two_sessions_per_disk(tmp_path: Path, process_reaper: ProcessReaper) -> None:
    """AHV Turbo's two sessions per disk: each session is verified and watched; both
    sessions of a vDisk move to the same remote CVM and both come home."""
    directory = tmp_path / "demo"
    demo = process_reaper.spawn(
        [
            sys.executable, "-m", "cluster.demo", "--dir", directory, "--stable-window", "5",
            "--steady-seconds", "2", "--hold-seconds", "2", "--base-address",
            demo_base_address(), "--sessions-per-disk", "2",
        ],
        name="demo",
    )  # fmt: skip
    returncode = demo.popen.wait(timeout=240)
    output = demo.log_text()
    assert returncode == 0, output
    rows = [match.groupdict() for match in SUMMARY_RE.finditer(output)]
    sessions = [f"demo-vm-{i}{suffix}" for i in range(3) for suffix in ("", "#2")]
    assert [row["vdisk"] for row in rows] == sessions, output
    for row in rows:
        assert row["mismatches"] == "0" and row["errors"] == "0", row
        assert int(row["verified"]) > 0 and row["final"] == "1", row
    moved = dict(re.findall(r"(demo-vm-\d(?:#2)?): moved to CVM ([23]) \(from CVM 1\)", output))
    assert set(moved) == set(sessions), output
    for vdisk in range(3):  # together: the second session on its first one's CVM
        assert moved[f"demo-vm-{vdisk}"] == moved[f"demo-vm-{vdisk}#2"], moved
    assert len(re.findall(r"demo-vm-\d(?:#2)?: moved to CVM 1 \(from CVM [23]\)", output)) == 6
    assert VmRecord.load(ClusterPaths(directory).vm_file("demo-vm")).sessions_per_disk == 2


def test_demo_interrupted_takes_the_cluster_down(
    tmp_path: Path, process_reaper: ProcessReaper
) -> None:
    directory = tmp_path / "demo"
    argv: list[str | Path] = [sys.executable, "-m", "cluster.demo", "--dir", directory]
    demo = process_reaper.spawn([*argv, "--base-address", demo_base_address()], name="demo")
    deadline = time.monotonic() + 60
    while "VM I/O through node 1" not in demo.log_text():
        assert demo.is_running() and time.monotonic() < deadline, demo.log_text()
        time.sleep(0.1)
    os.kill(demo.pid, signal.SIGTERM)
    assert demo.popen.wait(timeout=60) == 130, demo.log_text()
    assert "taking the cluster down" in demo.log_text()
    spec = ClusterSpec.load(directory)
    for node in spec.nodes:
        assert not tcp_port_answers(node.cvm_address, node.cvm_port)
        assert not tcp_port_answers(node.redirector_address, node.redirector_port)
    assert not list(ClusterPaths(directory).run.glob("*.pid"))
