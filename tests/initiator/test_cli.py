"""The `initiator` command line, as a user (or the cluster's failover tests) runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers.procs import ProcessReaper
from tests.peers.tgtd import MiB, TgtdTarget

TgtdFactory = Callable[..., TgtdTarget]
CLI_TIMEOUT = 60


def initiator(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "initiator.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for_client(port: int, timeout: float = 30.0) -> None:
    """Until some client holds an established TCP connection to 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listing = subprocess.run(
            ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        if listing.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"no client connected to port {port} within {timeout} s")


def test_ls_lists_targets_luns_and_sizes(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory(lun_sizes=[8 * MiB, 16 * MiB])
    done = initiator("ls", tgt.portal, "--json")
    assert done.returncode == 0, done.stderr
    [entry] = json.loads(done.stdout)
    assert entry["target"] == tgt.iqn
    assert entry["served_by"] == f"{tgt.portal}"
    sizes = {lun["lun"]: lun["size_bytes"] for lun in entry["luns"]}
    assert sizes[1] == 8 * MiB and sizes[2] == 16 * MiB
    table = initiator("ls", tgt.portal)
    assert table.returncode == 0 and "MiB" in table.stdout
    # Piped to a script, the table is never cut to 80 columns: `| grep iqn` finds it whole.
    assert [line for line in table.stdout.splitlines() if tgt.iqn in line], table.stdout


def test_inq(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory(lun_sizes=[8 * MiB])
    done = initiator("inq", tgt.url(), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["size_bytes"] == 8 * MiB and info["block_size"] == 512


def test_write_then_read_round_trips(tgtd_factory: TgtdFactory, tmp_path: Path) -> None:
    tgt = tgtd_factory(lun_sizes=[8 * MiB])
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(3 * MiB + 100))  # not whole blocks: padded with zeros
    written = initiator("write", tgt.url(), "40", "--file", str(source))
    assert written.returncode == 0, written.stderr
    copy = tmp_path / "out.bin"
    blocks = (3 * MiB + 100 + 511) // 512
    read = initiator("read", tgt.url(), "40", str(blocks), "-o", str(copy))
    assert read.returncode == 0, read.stderr
    data = copy.read_bytes()
    assert data[: 3 * MiB + 100] == source.read_bytes()
    assert data[3 * MiB + 100 :] == bytes(len(data) - 3 * MiB - 100)


def test_bench_json(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory(lun_sizes=[32 * MiB])
    for pattern in ("randread", "randrw", "write"):
        done = initiator(
            "bench", tgt.url(), "--rw", pattern, "--bs", "4k", "--qd", "8",
            "--seconds", "1", "--json",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["ios"] > 0 and report["iops"] > 0 and report["errors"] == 0
        assert {"p50", "p99", "max"} <= set(report["latency_us"])
        assert report["bytes"] == report["ios"] * 4096
    mixed = initiator(
        "bench", tgt.url(), "--rw", "randrw", "--rwmixread", "90", "--qd", "8",
        "--seconds", "1", "--json",
    )  # fmt: skip
    report = json.loads(mixed.stdout)
    assert report["reads"] > 4 * report["writes"] > 0


def test_verify_json(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory(lun_sizes=[16 * MiB])
    done = initiator("verify", tgt.url(), "--seconds", "1", "--json", "--size", "4m")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["mismatch_count"] == 0 and report["writes"] > 0


def test_errors_are_one_line_without_traceback(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory()
    cases = [
        ("inq", "iscsi://127.0.0.1:1/iqn.2026-11.x:y/0"),  # nothing listens there
        ("inq", "iscsi://127.0.0.1/nolun"),  # malformed URL
        ("inq", f"iscsi://{tgt.portal}/iqn.2026-11.test:absent/1"),  # no such target
        ("read", tgt.url(), "-5", "1"),
        ("bench", tgt.url(), "--bs", "1000", "--seconds", "1"),  # raised inside a nursery
    ]
    for args in cases:
        done = initiator(*args)
        assert done.returncode != 0, args
        assert "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("initiator: error:") or "usage:" in done.stderr, done.stderr


def test_verify_cli_survives_stargate_crash_and_restart(
    process_reaper: ProcessReaper, free_port: int, tmp_data_dir: Path
) -> None:
    """The data-loss detector as the cluster's failover tests use it: stargate is killed
    (SIGKILL) mid-run and restarted on the same port with the same data directory."""
    argv = [
        sys.executable, "-m", "stargate", "target", "--portal", f"127.0.0.1:{free_port}",
        "--data-dir", str(tmp_data_dir), "--vdisk", "v1:64M", "--log-level", "WARNING",
    ]  # fmt: skip
    stargate = process_reaper.spawn(argv, name="stargate")
    stargate.wait_for_port("127.0.0.1", free_port)
    url = f"iscsi://127.0.0.1:{free_port}/iqn.2010-06.com.nutanix:vmdisk-v1/0"
    verify = subprocess.Popen(
        [sys.executable, "-m", "initiator.cli", "verify", url, "--seconds", "5", "--json",
         "--size", "8m"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_client(free_port)
        time.sleep(1.0)  # let I/O flow (the CLI starts slowly on a busy machine)
        stargate.kill()
        time.sleep(1.0)
        restarted = process_reaper.spawn(argv, name="stargate-restarted")
        restarted.wait_for_port("127.0.0.1", free_port)
        stdout, stderr = verify.communicate(timeout=CLI_TIMEOUT)
    finally:
        if verify.poll() is None:
            verify.kill()
            verify.wait()
    assert verify.returncode == 0, stderr + stdout
    report = json.loads(stdout)
    assert report["mismatch_count"] == 0 and report["errors"] == 0, report
    assert report["reconnects"] >= 1
    assert report["longest_pause_s"] >= 0.9


def test_vm_command_reports_each_vdisk(
    process_reaper: ProcessReaper, free_port: int, tmp_data_dir: Path
) -> None:
    argv = [
        sys.executable, "-m", "stargate", "target", "--portal", f"127.0.0.1:{free_port}",
        "--data-dir", str(tmp_data_dir), "--vdisk", "a:16M", "--vdisk", "b:16M",
    ]  # fmt: skip
    process_reaper.spawn(argv, name="stargate").wait_for_port("127.0.0.1", free_port)
    done = initiator(
        "vm", f"127.0.0.1:{free_port}", "a", "b", "--seconds", "1", "--size", "2m", "--json"
    )
    assert done.returncode == 0, done.stderr
    rows = {row["vdisk"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {"a", "b"}
    assert all(row["verify_ok"] and row["ios"] > 0 for row in rows.values())
    assert rows["a"]["portal"] == f"127.0.0.1:{free_port}"


def test_vm_command_opens_sessions_per_disk(
    process_reaper: ProcessReaper, free_port: int, tmp_data_dir: Path
) -> None:
    """AHV Turbo's two sessions per disk: each session verifies its own slice of the disk."""
    argv = [
        sys.executable, "-m", "stargate", "target", "--portal", f"127.0.0.1:{free_port}",
        "--data-dir", str(tmp_data_dir), "--vdisk", "a:16M",
    ]  # fmt: skip
    process_reaper.spawn(argv, name="stargate").wait_for_port("127.0.0.1", free_port)
    done = initiator(
        "vm", f"127.0.0.1:{free_port}", "a", "--seconds", "1", "--size", "2m", "--json",
        "--sessions-per-disk", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["sessions"] == 2 and row["verify_ok"] and row["ios"] > 0, row
    refused = initiator("vm", f"127.0.0.1:{free_port}", "a", "--sessions-per-disk", "0")
    assert refused.returncode == 2 and "sessions per disk must be 1..8" in refused.stderr


def test_verify_until_sigterm_still_reports(tgtd_factory: TgtdFactory) -> None:
    """`--seconds 0` runs until SIGTERM, then does the final read-back and reports: how a
    failover test brackets its cluster operations."""
    tgt = tgtd_factory(lun_sizes=[16 * MiB])
    verify = subprocess.Popen(
        [sys.executable, "-m", "initiator.cli", "verify", tgt.url(), "--seconds", "0",
         "--json", "--size", "4m"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_client(tgt.port)
        time.sleep(1.0)
        verify.terminate()
        stdout, stderr = verify.communicate(timeout=CLI_TIMEOUT)
    finally:
        if verify.poll() is None:
            verify.kill()
            verify.wait()
    assert verify.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["ok"] and report["writes"] > 0 and report["final_pass_blocks"] > 0
